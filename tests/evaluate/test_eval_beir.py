import json

import pytest

from ragtune.errors import DatasetError
from ragtune.evaluate.beir import load_beir
from ragtune.evaluate.retrieval import evaluate_beir
from tests.conftest import run_cli

DOCS = {
    "d1": ("Volcanoes", "Basaltic lava flows from shield volcanoes in Hawaii."),
    "d2": ("Glaciers", "Glaciers carve U-shaped valleys as they retreat."),
    "d3": ("Bees", "Honey bees communicate the direction of flowers with a waggle dance."),
    "d4": ("Tides", "The moon's gravity raises ocean tides twice a day."),
}
QUERIES = {"q1": "how do bees tell others where flowers are", "q2": "what makes ocean tides", "q3": "valleys shaped by ice"}
QRELS = [("q1", "d3", 1), ("q2", "d4", 1), ("q3", "d2", 1)]


def make_beir(folder):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, (t, x) in DOCS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in QRELS))
    return folder


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_eval_on_a_tiny_beir_set(tmp_path, mode):
    beir = make_beir(tmp_path / "tiny")
    result = evaluate_beir(beir, mode=mode, scratch=tmp_path / "scratch")
    assert result.queries == 3 and result.documents == 4
    assert result.metrics["ndcg@10"] == pytest.approx(1.0)
    assert result.metrics["recall@100"] == 1.0
    again = evaluate_beir(beir, mode=mode, scratch=tmp_path / "scratch")
    assert again.timings["chunks_embedded"] == 0  # the scratch index is reused


def test_eval_cli_writes_json(tmp_path):
    beir = make_beir(tmp_path / "tiny")
    out = tmp_path / "out.json"
    r = run_cli("eval", "retrieval", "--beir", beir, "--mode", "hybrid", "--scratch", tmp_path / "s", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "ndcg@10: 1.0000" in r.stdout
    assert json.loads(out.read_text())["metrics"]["mrr@10"] == 1.0


def test_bad_beir_folders(tmp_path):
    with pytest.raises(DatasetError, match="no corpus.jsonl"):
        load_beir(tmp_path)
    beir = make_beir(tmp_path / "b")
    with pytest.raises(DatasetError, match="available splits: test"):
        load_beir(beir, split="dev")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1 d3\n")
    with pytest.raises(DatasetError, match=r"test.tsv:2: expected"):
        load_beir(beir)
    r = run_cli("eval", "retrieval", "--beir", tmp_path / "missing")
    assert r.returncode == 1 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
