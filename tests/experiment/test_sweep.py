"""Sweeps, run folders, MLflow tracking, resume, and the retrieval-only question sets."""

import json
import shutil

import pytest

from ragtune import Workspace
from ragtune.errors import ConfigError, DatasetError
from ragtune.evaluate.qa import from_beir, load_qa, write_qa
from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer
from ragtune.experiment.runs import RUNS_DIR, find_run, iter_runs
from ragtune.experiment.sweep import load_sweep, plan, run_sweep
from tests.conftest import HANDBOOK, REPO, run_cli

QA = REPO / "examples" / "handbook-qa.jsonl"


@pytest.fixture(scope="module")
def handbook_ws(tmp_path_factory):
    """One ingested handbook workspace for the module (tests copy it when they change it)."""
    root = tmp_path_factory.mktemp("exp") / "ws"
    ws = Workspace.init(root)
    shutil.copytree(HANDBOOK, root / "docs", ignore=shutil.ignore_patterns("_*.py"))
    ws.ingest([root / "docs"])
    return root


@pytest.fixture
def fresh_ws(handbook_ws, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(handbook_ws, root)
    # roots.json holds absolute paths: point it at this copy's docs
    (root / ".ragtune" / "roots.json").write_text(json.dumps([str(root / "docs")]))
    return Workspace(root)


def write_sweep(folder, body: str):
    path = folder / "sweep.toml"
    path.write_text(f'qa = "{QA}"\n' + body)
    return path


def mlflow_runs(ws, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws.state_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_two_config_sweep_tracks_two_mlflow_runs(fresh_ws, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, 'name = "two"\narm = "retrieval"\n[grid]\n"retrieve.k" = [1, 3]\n'))
    result = run_sweep(fresh_ws, sweep, log=lambda _: None)
    assert [o.status for o in result.outcomes] == ["done", "done"]
    tracked = mlflow_runs(fresh_ws, "two")
    assert len(tracked) == 2
    by_k = {r.data.params["retrieve.k"]: r for r in tracked}
    assert set(by_k) == {"1", "3"}
    for k, r in by_k.items():
        folder_run = find_run(fresh_ws.state_dir / RUNS_DIR, r.data.tags["ragtune.run_id"])
        assert r.data.params["arm"] == "retrieval" and r.data.params["retrieve.mode"] == "hybrid"
        assert r.data.metrics["recall_at_k"] == pytest.approx(folder_run.metrics["recall@k"])
        assert folder_run.info["config"]["retrieve"]["k"] == int(k)
        assert len(folder_run.predictions) == 10 and all(len(p["retrieved"]) <= int(k) for p in folder_run.predictions)
        assert folder_run.info["environment"]["embedder"].startswith("minilm/")
    # k=1 can only lose against k=3 on recall
    m1, m3 = (find_run(fresh_ws.state_dir / RUNS_DIR, by_k[k].data.tags["ragtune.run_id"]).metrics for k in ("1", "3"))
    assert m1["recall@k"] <= m3["recall@k"]


class StopAt:
    """A progress sink that interrupts (like Ctrl-C) when the n-th evaluation task starts."""

    def __init__(self, n):
        self.n, self.tasks = n, 0

    def task(self, name, total):
        self.tasks += 1
        if self.tasks == self.n:
            raise KeyboardInterrupt
        return self.tasks

    def advance(self, task, n=1):
        pass


def test_interrupted_sweep_resumes_without_redoing_the_finished_run(fresh_ws, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, 'name = "resume"\narm = "retrieval"\n[grid]\n"retrieve.mode" = ["dense", "bm25"]\n'))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(fresh_ws, sweep, progress=StopAt(2), log=lambda _: None)
    finished = [r for r in iter_runs(fresh_ws.state_dir / RUNS_DIR) if r.finished]
    assert len(finished) == 1 and len(mlflow_runs(fresh_ws, "resume")) == 1
    first = finished[0]
    stamp = (first.path / "metrics.json").stat().st_mtime_ns
    result = run_sweep(Workspace(fresh_ws.root), sweep, log=lambda _: None)
    assert [o.status for o in result.outcomes] == ["skipped", "done"]
    assert result.outcomes[0].run.id == first.id and (first.path / "metrics.json").stat().st_mtime_ns == stamp
    assert len(mlflow_runs(fresh_ws, "resume")) == 2
    assert {o.run.info["config"]["retrieve"]["mode"] for o in result.outcomes} == {"dense", "bm25"}


def test_chunk_size_sweep_shares_embeddings_and_indexes(fresh_ws, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, 'name = "chunks"\narm = "retrieval"\n[grid]\n"ingest.chunk_tokens" = [96, 256]\n"retrieve.k" = [1, 3]\n'))
    first = run_sweep(fresh_ws, sweep, log=lambda _: None)
    # 256 is the workspace's own setting: that index is used as it is; 96 gets one index for both k
    assert len(first.ingests) == 1 and first.chunks_embedded > 0
    variant = next(iter(first.ingests.values()))
    assert 0 < first.chunks_embedded <= variant.chunks_written  # sections shorter than 96 tokens come from the cache
    shutil.rmtree(fresh_ws.state_dir / "indexes")
    again = run_sweep(Workspace(fresh_ws.root), sweep, force=True, log=lambda _: None)
    assert again.chunks_embedded == 0 and next(iter(again.ingests.values())).chunks_written == variant.chunks_written
    assert len(mlflow_runs(fresh_ws, "chunks")) == 4  # --force replaced the four MLflow entries, did not add four
    runs = {(o.run.info["config"]["ingest"]["chunk_tokens"], o.run.info["config"]["retrieve"]["k"]): o.run for o in again.outcomes}
    assert runs[(96, 1)].info["environment"]["index_path"].startswith(".ragtune/indexes/")
    assert runs[(256, 1)].info["environment"]["index_path"] == ".ragtune/index"


def test_sweep_file_errors_name_the_problem(fresh_ws, tmp_path):
    with pytest.raises(ConfigError, match="missing 'qa'"):
        load_sweep(_toml(tmp_path, 'arm = "rag"\n'))
    with pytest.raises(ConfigError, match="arm = 'closed' is not valid; choose one of: rag, closed-book, retrieval"):
        load_sweep(write_sweep(tmp_path, 'arm = "closed"\n'))
    with pytest.raises(ConfigError, match="unknown key.*gird"):
        load_sweep(write_sweep(tmp_path, '[gird]\n"retrieve.k" = [1]\n'))
    bad = load_sweep(write_sweep(tmp_path, '[grid]\n"retrieve.kk" = [1, 2]\n'))
    with pytest.raises(ConfigError, match="unknown key 'kk'"):
        plan(fresh_ws, bad)
    same = load_sweep(write_sweep(tmp_path, '[[runs]]\n"retrieve.k" = 5\n[[runs]]\nname = "again"\n"retrieve.k" = 5\n'))
    with pytest.raises(ConfigError, match="identical settings"):
        plan(fresh_ws, same)


def _toml(folder, text):
    path = folder / "s.toml"
    path.write_text(text)
    return path


def test_retrieval_only_questions_from_beir(tmp_path, ws):
    beir = tmp_path / "tiny"
    (beir / "qrels").mkdir(parents=True)
    docs = [("d1", "Tides", "The moon raises the tides twice a day."), ("d2", "Bread", "Sourdough bread rises slowly overnight."),
            ("d3", "Bees", "Honey bees dance to show where flowers are.")]
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "what makes the tides"}\n{"_id": "q2", "text": "how do bees communicate"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\nq2\td2\t0\n")
    items = from_beir(beir)
    assert [(i.id, i.answers, i.doc_ids) for i in items] == [("q1", [], ["d1"]), ("q2", [], ["d3"])]
    assert items[1].metadata["qrels"] == {"d3": 2, "d2": 0}
    write_qa(items, tmp_path / "beir.jsonl")
    assert load_qa(tmp_path / "beir.jsonl") == items
    ws.ingest([beir / "corpus.jsonl"])
    result = evaluate_qa(items, workspace_answerer(ws, "retrieval", k=2, mode="dense"))
    assert result.generator is None and "f1" not in result.metrics
    assert result.metrics["recall@k"] == 1.0 and result.metrics["ndcg@k"] == 1.0
    assert [p.gold_rank for p in result.predictions] == [1, 1]


def test_answers_may_be_left_out_only_for_retrieval_only_questions(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text('{"id": "a", "question": "evidence only?", "doc_ids": ["d1"]}\n{"id": "b", "question": "no gold at all?"}\n')
    with pytest.raises(DatasetError, match="line 2: 'answers' must be a non-empty list.*leave 'answers' out and give 'doc_ids'"):
        load_qa(p)


@pytest.mark.slow
def test_cli_sweep_runs_list_compare(fresh_ws, tmp_path):
    path = write_sweep(tmp_path, 'name = "cli"\narm = "retrieval"\n[grid]\n"retrieve.mode" = ["bm25", "hybrid"]\n')
    r = run_cli("experiment", "run", path, "--dry-run", "-w", fresh_ws.root)
    assert r.returncode == 0 and "cli:mode=bm25" in r.stdout and "cli:mode=hybrid" in r.stdout
    assert not (fresh_ws.state_dir / RUNS_DIR).exists()
    r = run_cli("experiment", "run", path, "-w", fresh_ws.root)
    assert r.returncode == 0, r.stderr
    ids = [p.id for p in plan(fresh_ws, load_sweep(path))]
    r = run_cli("runs", "list", "--json", "-w", fresh_ws.root)
    listed = json.loads(r.stdout)
    assert [x["id"] for x in listed] == ids and all(x["finished"] for x in listed)
    r = run_cli("runs", "compare", ids[0], ids[1][:6], "-w", fresh_ws.root)
    assert r.returncode == 0, r.stderr
    assert "retrieve.mode: 'bm25' → 'hybrid'" in r.stdout and "10 questions scored by hit" in r.stdout
    r = run_cli("runs", "compare", ids[0], "nope", "-w", fresh_ws.root)
    assert r.returncode != 0 and "no run 'nope'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_rag_sweep_over_generator_settings_with_judge(fresh_ws, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, 'name = "gen"\narm = "rag"\nlimit = 2\njudge = true\n'
                                             '[grid]\n"generate.max_tokens" = [8, 32]\n'))
    result = run_sweep(fresh_ws, sweep, log=lambda _: None)
    short, long = (o.run for o in result.outcomes)
    assert [r.info["config"]["generate"]["max_tokens"] for r in (short, long)] == [8, 32]
    assert all(p["usage"]["completion_tokens"] <= 8 for p in short.predictions)
    assert max(p["usage"]["completion_tokens"] for p in long.predictions) > 8
    for run in (short, long):
        judged = [p["judge"] for p in run.predictions if "judge" in p]
        assert len(judged) == 2 and run.metrics["judge_parse_failure_rate"] == sum(not j["parsed"] for j in judged) / 2
        assert run.info["judge"] and run.info["environment"]["generator_sha256"]
        assert all(p["prompt"].startswith("<|im_start|>system") and p["retrieved"] for p in run.predictions)
    tracked = {r.data.params["generate.max_tokens"]: r.data.metrics for r in mlflow_runs(fresh_ws, "gen")}
    assert tracked["8"]["f1"] == pytest.approx(short.metrics["f1"]) and "judge_parse_failure_rate" in tracked["32"]


@pytest.mark.slow
def test_cli_import_beir_and_synth_qa(fresh_ws, tmp_path):
    out = tmp_path / "synth.jsonl"
    r = run_cli("data", "synth-qa", "-n", "2", "-o", out, "-w", fresh_ws.root)
    assert r.returncode == 0, r.stderr
    items = load_qa(out)
    assert 1 <= len(items) <= 2 and all(i.metadata["synthetic"] and i.doc_ids for i in items)
    assert f"wrote {len(items)} questions" in " ".join(r.stdout.split())
    r = run_cli("data", "import-beir", tmp_path / "missing", "-o", tmp_path / "b.jsonl")
    assert r.returncode != 0 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
