"""The command line as a user meets it: real subprocesses, exit codes, no tracebacks."""

import json

import pytest

from tests.conftest import HANDBOOK, run_cli
from tests.formats import make_all


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert run_cli("init", root / "kb").returncode == 0
    make_all(root / "docs")
    (root / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4 nope")
    r = run_cli("ingest", root / "docs", HANDBOOK, "--workspace", root / "kb")
    assert r.returncode == 1  # one file failed; the rest landed
    assert "broken.pdf" in r.stdout and "corrupt or unreadable PDF" in r.stdout
    assert "1 file(s) not ingested; everything else was committed" in r.stdout
    return root


def test_search_prints_ranked_cited_chunks(kb):
    r = run_cli("search", "Which port does the telemetry daemon listen on?", "-k", "2", cwd=kb / "kb")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[1]
    assert first.lstrip().startswith("1 ") and "guide.md › Networking > Ports" in first
    assert "48213" in r.stdout


def test_search_json(kb):
    r = run_cli("search", "office parrot", "--json", "-k", "3", "--mode", "bm25", "--workspace", kb / "kb")
    data = json.loads(r.stdout)
    assert data["mode"] == "bm25" and [h["rank"] for h in data["hits"]] == [1, 2, 3][:len(data["hits"])]
    top = data["hits"][0]
    assert top["source"].endswith("memo.docx") and "Admiral Biscuit" in top["text"]
    assert {"score", "chunk_id", "doc_id", "title", "heading", "page", "start", "end", "metadata"} <= set(top)


def test_filter_from_the_command_line(kb):
    r = run_cli("search", "opening hours", "--filter", "source=*cafeteria.txt", "--json", "-w", kb / "kb")
    hits = json.loads(r.stdout)["hits"]
    assert hits and all(h["source"].endswith("cafeteria.txt") for h in hits)


def test_reingest_via_cli_is_a_noop(kb):
    r = run_cli("ingest", "--workspace", kb / "kb")  # no paths: refresh what was ingested before
    assert "added 0 · updated 0 · unchanged 14" in r.stdout


def test_index_stats_json(kb):
    r = run_cli("index", "stats", "--json", "-w", kb / "kb")
    stats = json.loads(r.stdout)
    assert stats["sources"] == 14 and stats["documents"] == 15 and stats["model"] == "minilm"


@pytest.mark.parametrize("args, message", [
    (["search", "x", "--mode", "fuzzy"], "--mode 'fuzzy' is not valid; choose one of: dense, bm25, hybrid"),
    (["search", "  "], "the query is empty"),
    (["search", "x", "--filter", "nonsense"], "must look like KEY=VALUE"),
    (["search", "x", "--filter", "page=two"], "page must be a whole number"),
])
def test_user_mistakes_give_one_line_and_nonzero_exit(kb, args, message):
    r = run_cli(*args, "--workspace", kb / "kb")
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_no_workspace(tmp_path):
    r = run_cli("search", "anything", cwd=tmp_path)
    assert r.returncode == 1 and "run `ragtune init`" in r.stderr and "Traceback" not in r.stderr


def test_search_before_ingest(tmp_path):
    run_cli("init", tmp_path)
    r = run_cli("search", "anything", cwd=tmp_path)
    assert r.returncode == 1 and "run `ragtune ingest PATH` first" in r.stderr


def test_bad_config_value(tmp_path):
    run_cli("init", tmp_path)
    toml = tmp_path / "ragtune.toml"
    toml.write_text(toml.read_text().replace('mode = "hybrid"', 'mode = "semantic"'))
    r = run_cli("search", "x", cwd=tmp_path)
    assert r.returncode == 2
    assert "[retrieve] mode = 'semantic' is not valid; choose one of: dense, bm25, hybrid" in r.stderr


def test_nonexistent_path(tmp_path):
    run_cli("init", tmp_path)
    r = run_cli("ingest", tmp_path / "nope", cwd=tmp_path)
    assert r.returncode == 1 and "nope: no such file or directory" in r.stdout


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for command in ("init", "ingest", "search", "index", "eval"):
        assert command in r.stdout
    assert "--beir" in run_cli("eval", "retrieval", "--help").stdout


def test_import_is_light():
    """`import ragtune` and the CLI module must not pull heavy libraries (speed is in benchmarks/)."""
    import subprocess
    import sys

    code = "import sys, ragtune, ragtune.cli; print(sorted(m for m in ('torch','lancedb','onnxruntime','transformers','pyarrow','numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "[]"
