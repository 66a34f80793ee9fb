"""The Ray engine on a real local Ray head (the ``ray_head`` fixture): the same index as the local
engine, bad files reported, unchanged files skipped, the engine chosen in ragtune.toml, clear errors."""

import json
import re
import shutil
import sys

import numpy as np
import pytest

from ragtune import Workspace
from ragtune.config import IngestConfig
from ragtune.errors import ConfigError
from ragtune.ingest.pipeline import _settings_key
from tests.conftest import HANDBOOK, free_port, run_cli

COLUMNS = ["id", "source", "doc_id", "file_key", "title", "heading", "page", "start", "end", "text", "metadata", "vector"]


def workspace(root, **ingest):
    """A workspace whose ragtune.toml sets these [ingest] keys, and commits every 16 chunks (several
    commits, so several embedding calls are in flight on the actors at once)."""
    ws = Workspace.init(root)
    toml = (ws.root / "ragtune.toml").read_text()
    for key, value in {"commit_chunks": 16, **ingest}.items():
        toml = re.sub(rf"^{key} = .*$", f"{key} = {json.dumps(value)}", toml, count=1, flags=re.M)
    (ws.root / "ragtune.toml").write_text(toml)
    return Workspace(ws.root)


@pytest.fixture(scope="module")
def both(ray_head, tmp_path_factory):
    """The handbook and a corrupt PDF, ingested locally into one workspace and on Ray (2 embedding actors) into another."""
    base = tmp_path_factory.mktemp("ray")
    docs = base / "docs"
    shutil.copytree(HANDBOOK, docs, ignore=shutil.ignore_patterns("_*.py"))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    local = workspace(base / "local")
    ray = workspace(base / "ray", engine="ray", ray_address=ray_head.address, ray_actors=2)
    return docs, local, local.ingest([docs]), ray, ray.ingest([docs])


def test_ray_ingest_stores_what_local_ingest_stores(both, ray_head):
    docs, local, local_report, ray, ray_report = both
    assert local_report.engine == "local"
    assert ray_report.engine == f"ray at {ray_head.address}: 1 node(s), 2 CPUs, 2 embedding actor(s)"
    assert ray_report.added == local_report.added and len(ray_report.added) == 8
    assert (ray_report.chunks_written, ray_report.chunks_embedded) == (local_report.chunks_written, local_report.chunks_embedded)
    assert ray_report.index_version == local_report.index_version > 3  # as many commits
    expected = {row.pop("id"): row for row in local.store.rows(COLUMNS)}
    got = {row.pop("id"): row for row in ray.store.rows(COLUMNS)}
    assert got.keys() == expected.keys() and len(got) == local_report.chunks_written
    for chunk_id, row in expected.items():
        vector = np.array(row.pop("vector"))
        assert np.abs(np.array(got[chunk_id].pop("vector")) - vector).max() <= 1e-5, chunk_id
        assert got[chunk_id] == row
    question = "How many days of annual leave do new employees get?"
    assert [h.chunk_id for h in ray.search(question, k=5)] == [h.chunk_id for h in local.search(question, k=5)]


def test_a_corrupt_file_is_reported_and_the_rest_stored(both):
    docs, _, local_report, ray, ray_report = both
    assert ray_report.problems == local_report.problems
    [problem] = ray_report.errors
    assert problem.path == "../docs/broken.pdf" and problem.reason.startswith("corrupt or unreadable PDF")
    others = sorted(f"../docs/{p.name}" for p in docs.iterdir() if p.name != "broken.pdf")
    assert sorted(ray_report.added) == others
    assert sorted({r["source"] for r in ray.store.rows(["source"])}) == others


def test_engine_settings_do_not_change_file_keys():
    assert _settings_key(IngestConfig()) == _settings_key(IngestConfig(engine="ray", ray_address="10.0.0.5:6379", ray_actors=3))


def test_bad_address_is_one_clear_error(ray_head, tmp_path):  # ray_head: skipped (failed in CI) without Ray
    ws = workspace(tmp_path / "ws")
    r = run_cli("ingest", HANDBOOK / "safety.md", "--workspace", ws.root, "--ray-address", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert re.search(r"error: cannot reach a Ray cluster at 127\.0\.0\.1:\d+ \(Connection refused\); start one there "
                     r"\(`ray start --head --port=\d+`\) or set \[ingest\] ray_address", " ".join(r.stderr.split())), r.stderr
    from ragtune.ingest.ray_engine import connect

    with pytest.raises(ConfigError, match="is not an address"):
        connect("head-node")


def test_auto_follows_ray_address(ray_head, monkeypatch):
    from ragtune.ingest.ray_engine import connect

    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    assert connect("auto")[1] == ray_head.address
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match="cannot reach a Ray cluster"):
        connect("auto")


def test_missing_ray_says_what_to_install(monkeypatch):
    from ragtune.ingest.ray_engine import connect

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'ragtune\[ray\]'"):
        connect("auto")


def test_engine_from_ragtune_toml_skips_unchanged_files_and_reuses_embeddings(both, ray_head):
    """Last: it changes the Ray workspace. The CLI reads engine = "ray" from ragtune.toml."""
    docs, _, _, ray, _ = both
    (docs / "cafeteria.txt").write_text("The cafeteria serves ramen on Thursdays.\n")
    r = run_cli("ingest", docs, "--workspace", ray.root)
    assert r.returncode == 1, r.stderr  # broken.pdf is still broken
    out = " ".join(r.stdout.split())
    assert "added 0 · updated 1 · unchanged 7 · removed 0 · 1 chunks written (1 embedded, the rest from cache)" in out
    assert f"on ray at {ray_head.address}: 1 node(s), 2 CPUs, 2 embedding actor(s)" in out
    assert "broken.pdf: corrupt or unreadable PDF" in out
    assert ray.search("What does the cafeteria serve on Thursdays?", k=1)[0].text.startswith("The cafeteria serves ramen")
