import json

import pytest

from ragtune import Workspace
from ragtune.errors import DatasetError
from ragtune.evaluate.qa import from_squad, load_qa, write_qa
from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer
from tests.conftest import HANDBOOK, run_cli


def test_bad_question_files_give_row_numbered_errors(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text('{"id": "a", "question": "ok?", "answers": ["yes"]}\n'
                 'not json at all\n'
                 '{"id": "b", "answers": ["x"]}\n'
                 '{"id": "c", "question": "empty answers?", "answers": []}\n'
                 '\n'
                 '{"id": "a", "question": "dup?", "answers": ["y"]}\n')
    with pytest.raises(DatasetError) as e:
        load_qa(p)
    msg = str(e.value)
    assert "4 bad row(s)" in msg
    for expected in ("line 2: not valid JSON", "line 3: missing or empty 'question'",
                     "line 4: 'answers' must be a non-empty list", "line 6: duplicate id 'a'"):
        assert expected in msg
    r = run_cli("data", "validate", p)
    assert r.returncode == 1 and "line 3: missing or empty 'question'" in r.stderr and "Traceback" not in r.stderr


def test_round_trip_and_squad_import(tmp_path):
    squad = {"data": [{"title": "Tides", "paragraphs": [
        {"context": "The moon raises tides twice a day.", "qas": [
            {"id": "t1", "question": "What raises tides?", "answers": [{"text": "The moon", "answer_start": 0},
                                                                        {"text": "The moon", "answer_start": 0}]}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    items = from_squad(tmp_path / "squad.json")
    assert [(i.id, i.answers, i.doc_ids) for i in items] == [("t1", ["The moon"], ["Tides#p0"])]
    write_qa(items, tmp_path / "qa.jsonl")
    assert load_qa(tmp_path / "qa.jsonl") == items


@pytest.mark.slow
def test_eval_qa_rag_and_closed_book(tmp_path):
    import shutil

    ws = Workspace.init(tmp_path / "ws")
    shutil.copytree(HANDBOOK, ws.root / "docs")
    ws.ingest([ws.root / "docs"])
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "founder", "question": "Who founded the observatory?", "answers": ["Cornelius Vantreight"], "doc_ids": ["docs/history.html"]}\n'
                  '{"id": "badge", "question": "Where is the Badge Office?", "answers": ["room G-114", "G-114"]}\n')
    items = load_qa(qa)
    rag = evaluate_qa(items, workspace_answerer(ws, "rag"), judge=ws.generator).to_dict()
    by_id = {p["id"]: p for p in rag["predictions"]}
    judged = [p["judge"] for p in rag["predictions"]]
    assert all(j["parsed"] == (j["score"] in (0.0, 1.0)) and j["prompt"] for j in judged)
    failures = sum(not j["parsed"] for j in judged)
    assert rag["metrics"]["judge_parse_failures"] == failures
    assert rag["metrics"]["judge_parse_failure_rate"] == failures / len(judged)
    assert by_id["founder"]["contains"] == 1.0 and by_id["badge"]["contains"] == 1.0
    assert by_id["founder"]["prompt"].startswith("<|im_start|>system") and by_id["founder"]["retrieved"]
    assert rag["metrics"]["contains"] == 1.0 and 0 < rag["metrics"]["groundedness"] <= 1
    assert by_id["founder"]["gold_rank"] == 1 and rag["metrics"]["recall@k"] == 1.0 and "gold_rank" not in by_id["badge"]
    closed = evaluate_qa(items, workspace_answerer(ws, "closed-book")).to_dict()
    assert all(p["retrieved"] == [] and "<source" not in p["prompt"] for p in closed["predictions"])
    assert closed["metrics"]["contains"] < rag["metrics"]["contains"]
    out = tmp_path / "run.json"
    r = run_cli("eval", "qa", "--qa", qa, "--json", out, "--workspace", ws.root)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["metrics"]["contains"] == 1.0
    from ragtune.experiment.runs import iter_runs

    (run,) = iter_runs(ws.state_dir / "runs")  # recorded: run folder (+ MLflow)
    assert run.finished and run.metrics["contains"] == 1.0 and len(run.predictions) == 2
    assert run.info["qa"]["questions"] == 2 and run.info["environment"]["generator_sha256"]
