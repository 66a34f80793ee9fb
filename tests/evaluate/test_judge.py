"""LLM-as-judge: the strict verdict parser, the aggregate, and a real judge run with SmolLM2."""

import math

import pytest

from ragtune.errors import DatasetError
from ragtune.evaluate.judge import (JUDGE_EXAMPLES, JUDGE_SYSTEM, Judgement, aggregate_judgements, judge,
                                    judge_messages, parse_verdict)


@pytest.mark.parametrize("raw, verdict, reason", [
    ("VERDICT: correct", "correct", ""),
    ("VERDICT: incorrect", "incorrect", ""),
    ("verdict: CORRECT", "correct", ""),
    ("  Verdict:   Incorrect  ", "incorrect", ""),
    ("VERDICT:correct", "correct", ""),
    ("VERDICT: correct.", "correct", ""),
    ("\n\nVERDICT: incorrect\n", "incorrect", ""),
    ("VERDICT: correct\nBoth name the same year.\n\nIt matches.", "correct", "Both name the same year.\nIt matches."),
])
def test_valid_verdicts_parse(raw, verdict, reason):
    assert parse_verdict(raw) == (verdict, reason, None)


@pytest.mark.parametrize("raw, error", [
    ("", "empty output"),
    ("  \n\t\n", "empty output"),
    ("The candidate answer is correct.", "the first line is not"),
    ("Sure! VERDICT: correct", "the first line is not"),
    ("Reasoning first.\nVERDICT: correct", "the first line is not"),
    ("**VERDICT: correct**", "the first line is not"),
    ("VERDICT: correct incorrect", "the first line is not"),
    ("VERDICT: correct/incorrect", "the first line is not"),
    ("VERDICT: not correct", "the first line is not"),
    ("VERDICT: correctly", "the first line is not"),
    ("VERDICT: correct!", "the first line is not"),
    ("VERDICT: 7", "the first line is not"),
    ("VERDICT: 1", "the first line is not"),
    ("VERDICT: 5/5", "the first line is not"),
    ("VERDICT:", "the first line is not"),
    ("VERDICT: correct\nVERDICT: incorrect", "more than one VERDICT line"),
    ("VERDICT: incorrect\nOn reflection:\nverdict : correct", "more than one VERDICT line"),
    ("VERDICT: correct\nVERDICT: correct", "more than one VERDICT line"),
])
def test_anything_else_is_unparsed(raw, error):
    verdict, reason, why = parse_verdict(raw)
    assert verdict is None and reason == ""
    assert why.startswith(error)


def _j(score):
    return Judgement(score, {1.0: "correct", 0.0: "incorrect"}.get(score), score is not None, "raw", "prompt")


def test_aggregate_counts_failures_and_never_scores_them():
    out = aggregate_judgements([_j(1.0), _j(0.0), _j(1.0), _j(None)])
    assert out == {"judge_score": 2 / 3, "judge_parsed": 3, "judge_parse_failures": 1, "judge_parse_failure_rate": 0.25}


def test_aggregate_with_nothing_parsed_has_no_score():
    out = aggregate_judgements([_j(None), _j(None)])
    assert out == {"judge_score": None, "judge_parsed": 0, "judge_parse_failures": 2, "judge_parse_failure_rate": 1.0}
    assert aggregate_judgements([]) == {"judge_score": None, "judge_parsed": 0, "judge_parse_failures": 0,
                                        "judge_parse_failure_rate": None}


def test_messages_show_the_rules_the_examples_and_the_case():
    messages = judge_messages("Who founded it?", "Cornelius", ["Cornelius Vantreight"], context="Founded by Cornelius Vantreight.")
    assert messages[0] == {"role": "system", "content": JUDGE_SYSTEM}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * len(JUDGE_EXAMPLES) + ["user"]
    assert messages[2]["content"] == f"VERDICT: {JUDGE_EXAMPLES[0][3]}"
    last = messages[-1]["content"]
    assert last.startswith("Question: Who founded it?\nReference answers: Cornelius Vantreight\n")
    assert "Context: Founded by Cornelius Vantreight." in last and "Candidate answer: Cornelius" in last
    assert "Context:" not in judge_messages("q?", "a", ["b"])[-1]["content"]


@pytest.mark.parametrize("question, references", [("", ["x"]), ("Who?", []), ("Who?", ["  "])])
def test_judge_refuses_a_case_it_cannot_grade(question, references):
    with pytest.raises(DatasetError, match="the judge needs"):
        judge(object(), question, "an answer", references)


CASES = [  # (question, answer, references): right and wrong answers about the handbook's facts
    ("Who founded the observatory?", "Cornelius Vantreight", ["Cornelius Vantreight"]),
    ("Who founded the observatory?", "Marie Curie", ["Cornelius Vantreight"]),
    ("On which mountain is the observatory?", "It is on Mount Tavish.", ["Mount Tavish"]),
    ("How high is the summit?", "1,200 metres", ["2,418 metres"]),
    ("What colour badge do general staff get?", "green", ["Green"]),
]


@pytest.mark.slow
def test_real_judge_run_with_smollm2():
    from ragtune.config import GenerateConfig
    from ragtune.generate import get_generator

    g = get_generator(GenerateConfig())
    judgements = [judge(g, q, a, refs) for q, a, refs in CASES]
    for j, (q, a, refs) in zip(judgements, CASES):
        assert j.prompt == g.format(judge_messages(q, a, refs))  # the exact prompt is kept
        assert JUDGE_SYSTEM in j.prompt and f"Candidate answer: {a}" in j.prompt
        if j.parsed:
            assert j.verdict in ("correct", "incorrect") and j.score == {"correct": 1.0, "incorrect": 0.0}[j.verdict]
            assert j.error is None
        else:
            assert j.score is None and j.verdict is None and j.error
    agg = aggregate_judgements(judgements)
    failures = sum(not j.parsed for j in judgements)
    assert agg["judge_parse_failures"] == failures and agg["judge_parsed"] == len(CASES) - failures
    assert agg["judge_parse_failure_rate"] == failures / len(CASES)
    assert agg["judge_parsed"] >= 3  # the worked examples make even a 135M model keep the format (greedy: stable)
    assert not math.isnan(agg["judge_score"])
    again = judge(g, *CASES[0])
    assert again.raw == judgements[0].raw  # greedy by default: the same verdict every time
