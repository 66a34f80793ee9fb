"""Demonstration data for supervised fine-tuning: formats, validation, lengths, split, QA import."""

import gzip
import json

import pytest

from ragtune.errors import ConfigError, DatasetError
from ragtune.evaluate.qa import load_qa
from ragtune.train.data import from_qa, load_examples, overlap, split, write_examples
from ragtune.types import Example, QAItem
from tests.conftest import REPO, gsm8k_like

HANDBOOK_QA = REPO / "examples" / "handbook-qa.jsonl"

QUESTION, ANSWER = "What is 2 + 3?", "2 + 3 = 5."
EXPECTED = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def example(i: int, question: str | None = None) -> Example:
    return Example(f"ex-{i}", [{"role": "user", "content": question or f"question {i}"},
                               {"role": "assistant", "content": f"answer {i}"}], {})


@pytest.mark.parametrize("row", [
    {"messages": EXPECTED},
    {"prompt": QUESTION, "completion": ANSWER},
    {"prompt": [EXPECTED[0]], "completion": ANSWER},
    {"prompt": [EXPECTED[0]], "completion": [EXPECTED[1]]},
    {"q": QUESTION, "a": ANSWER},
], ids=["messages", "prompt-completion", "conversational-prompt", "conversational-both", "field-mapping"])
def test_every_format_loads_to_the_same_example(tmp_path, row):
    mapping = {"prompt_field": "q", "completion_field": "a"} if "q" in row else {}
    path = write_jsonl(tmp_path / "one.jsonl", [{"id": "sum", **row, "level": 1, "tags": ["ignored"]}])
    assert load_examples(path, **mapping) == [Example("sum", EXPECTED, {"level": 1})]


def test_system_argument_is_added_unless_a_system_turn_is_there(tmp_path):
    system = {"role": "system", "content": "Answer briefly."}
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": QUESTION, "completion": ANSWER},
                                              {"messages": [{"role": "system", "content": "Own."}, *EXPECTED]}])
    first, second = load_examples(path, system="Answer briefly.")
    assert first.messages == [system, *EXPECTED]
    assert second.messages[0]["content"] == "Own." and len(second.messages) == 3
    assert [e.id for e in (first, second)] == ["1", "2"]  # no id: the line number


def test_gsm8k_rows_load_through_a_field_mapping(tmp_path):
    rows = gsm8k_like(20)
    path = write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    examples = load_examples(path, prompt_field="question", completion_field="answer")
    assert [e.id for e in examples] == [r["id"] for r in rows]
    for ex, row in zip(examples, rows):
        assert ex.messages == [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
        assert ex.metadata == {"final_answer": row["final_answer"]}
        assert ex.messages[-1]["content"].endswith(f"#### {row['final_answer']}")


def test_gsm8k_without_a_mapping_says_which_fields_to_map(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", [json.dumps(gsm8k_like(1)[0])])
    with pytest.raises(DatasetError, match=r"line 1: no 'messages'.*fields: id, question, answer, final_answer.*--prompt-field"):
        load_examples(path)
    with pytest.raises(ConfigError, match="go together"):
        load_examples(path, prompt_field="question")


def test_a_bad_file_lists_every_bad_line(tmp_path):
    good = {"messages": EXPECTED}
    path = write_jsonl(tmp_path / "bad.jsonl", [
        good,                                                                          # 1 fine
        '{"prompt": "unterminated',                                                    # 2 bad JSON
        {"prompt": "Where is the badge office?"},                                      # 3 no completion
        {"messages": [{"role": "user", "content": "  "}, EXPECTED[1]]},                # 4 empty content
        {"messages": [EXPECTED[0], {"role": "bot", "content": "5"}]},                  # 5 bad role
        {"messages": [EXPECTED[0], EXPECTED[1], {"role": "user", "content": "And?"}]},  # 6 ends with the user
        good,                                                                          # 7 duplicate of 1
        '["a list"]',                                                                  # 8 not an object
    ])
    with pytest.raises(DatasetError) as err:
        load_examples(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 7 bad row(s):"
    assert [line.strip().split(":")[0] for line in lines[1:]] == [f"line {n}" for n in range(2, 9)]
    text = str(err.value)
    for expected in ["line 2: not valid JSON", "line 3: missing or empty 'completion'",
                     "line 4: messages[0]: missing or empty 'content'", "line 5: messages[1]: role 'bot' is not one of system, user, assistant",
                     "line 6: the last turn is the user's", "line 7: duplicate of line 1", "line 8: expected a JSON object, got list"]:
        assert expected in text


def test_many_bad_lines_are_capped_with_the_total(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [EXPECTED[0]]}] * 14)
    with pytest.raises(DatasetError, match=r"14 bad row\(s\) \(and 4 more\)") as err:
        load_examples(path)
    assert "line 10:" in str(err.value) and "line 11:" not in str(err.value)


def test_empty_and_missing_files_and_duplicate_ids(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="no examples"):
        load_examples(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    two = write_jsonl(tmp_path / "ids.jsonl", [{"id": "a", "prompt": "x", "completion": "y"},
                                               {"id": "a", "prompt": "z", "completion": "y"}])
    with pytest.raises(DatasetError, match=r"line 2: duplicate id 'a' \(also on line 1"):
        load_examples(two)


@pytest.mark.slow
def test_lengths_are_counted_with_the_smollm2_chat_template(tmp_path):
    from transformers import AutoTokenizer

    from ragtune.generate import model_path
    from ragtune.train.sft import encode

    gguf = model_path("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    short = Example("short", EXPECTED, {})
    long = Example("long", [{"role": "user", "content": "Repeat: " + "observatory " * 60}, EXPECTED[1]], {})
    reference = len(tokenizer.apply_chat_template(long.messages, tokenize=True)["input_ids"])
    assert len(encode(long, tokenizer, reference).input_ids) == reference
    assert len(encode(short, tokenizer, 50).input_ids) < 50 < reference
    with pytest.raises(DatasetError, match=f"example long has {reference} tokens, more than max_length = 50"):
        encode(long, tokenizer, 50)


def test_split_is_deterministic_disjoint_and_stable_when_rows_are_appended():
    examples = [example(i) for i in range(200)]
    train, held_out = split(examples, 0.1, seed=7)
    assert split(examples, 0.1, seed=7) == (train, held_out)
    assert {e.id for e in train}.isdisjoint(e.id for e in held_out)
    assert len(train) + len(held_out) == 200 and 8 <= len(held_out) <= 35
    assert split(examples, 0.1, seed=8)[1] != held_out  # the seed matters
    more_train, more_eval = split(examples + [example(i) for i in range(200, 260)], 0.1, seed=7)
    assert more_eval[:len(held_out)] == held_out and set(e.id for e in more_train) >= {e.id for e in train}


def test_split_keeps_one_on_each_side_and_checks_the_fraction():
    two = [example(0), example(1)]
    for seed in range(5):
        train, held_out = split(two, 0.01, seed)
        assert len(train) == 1 and len(held_out) == 1
        assert len(split(two, 0.99, seed)[0]) == 1
    assert split(two, 0.0, 0) == (two, [])
    assert split([example(0)], 0.5, 0)[0] + split([example(0)], 0.5, 0)[1] == [example(0)]
    with pytest.raises(ConfigError, match="eval_fraction = 1.5"):
        split(two, 1.5, 0)


def test_overlap_finds_prompts_shared_by_train_and_eval():
    train = [example(0, "Where is the badge office?"), example(1)]
    held_out = [example(2, "where is the  BADGE office?"), example(3)]
    assert overlap(train, held_out) == ["eval example 'ex-2' has the same prompt as train example(s) 'ex-0'"]
    assert overlap(train, [example(3)]) == []
    # the answer (last assistant turn) is not part of the prompt: same question, other answer still overlaps
    assert len(overlap([example(4, "q")], [Example("z", [{"role": "user", "content": "q"},
                                                          {"role": "assistant", "content": "other"}], {})])) == 1


def test_from_qa_without_retrieval_skips_retrieval_only_items():
    items = load_qa(HANDBOOK_QA)[:3] + [QAItem("beir-1", "a query", [], ["doc-1"])]
    logged = []
    examples = from_qa(items, system="Answer in one sentence.", log=logged.append)
    assert [e.id for e in examples] == [it.id for it in items[:3]]
    assert logged == ["skipped 1 retrieval-only question(s) (no answers to learn from)"]
    first = examples[0]
    assert first.messages == [{"role": "system", "content": "Answer in one sentence."},
                              {"role": "user", "content": items[0].question},
                              {"role": "assistant", "content": items[0].answers[0]}]
    with pytest.raises(DatasetError, match="none of the 1 question"):
        from_qa(items[3:])
    with pytest.raises(ConfigError, match="needs a workspace"):
        from_qa(items, k=3)


@pytest.mark.slow
def test_from_qa_with_retrieval_puts_the_chains_sources_in_the_prompt(ws, handbook_copy):
    from ragtune.rag.prompt import DEFAULT_TEMPLATE

    ws.ingest([handbook_copy])
    items = [it for it in load_qa(HANDBOOK_QA) if it.id in {"badge-office", "hotel-cap"}]
    examples = from_qa(items, chain=ws.chain(), k=3)
    assert [e.id for e in examples] == ["badge-office", "hotel-cap"]
    for ex, item in zip(examples, items):
        system, user, assistant = ex.messages
        assert system == {"role": "system", "content": DEFAULT_TEMPLATE.split("\n---\n")[0]}
        assert user["content"].count('<source id="') == len(ex.metadata["retrieved"]) and 1 <= len(ex.metadata["retrieved"]) <= 3
        assert '<source id="1" title="' in user["content"] and user["content"].endswith(f"Question: {item.question}")
        assert assistant == {"role": "assistant", "content": item.answers[0]}
        assert ex.metadata["gold_retrieved"] is True  # the handbook answers both from the gold file
    badge = examples[0].messages[1]["content"]
    assert "G-114" in badge  # the gold evidence text is inside the fenced sources
    assert ws.ask(items[0].question, k=3).messages == examples[0].messages[:2]  # what the chain sends at inference
    replaced = from_qa(items[:1], chain=ws.chain(), k=3, system="Be terse.")[0]
    assert replaced.messages[0] == {"role": "system", "content": "Be terse."} and replaced.messages[1:] == examples[0].messages[1:]


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_and_load_round_trip(tmp_path, name):
    examples = [Example("a", [{"role": "system", "content": "S"}, *EXPECTED], {"final_answer": "5", "retrieved": ["x.md"]}),
                Example("b", [{"role": "user", "content": "Hi\n  indented"}, {"role": "assistant", "content": " kept "}], {})]
    path = tmp_path / name
    assert write_examples(examples, path) == 2
    assert load_examples(path) == examples
    if name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            assert json.loads(f.readline())["messages"][0]["role"] == "system"
