"""SIGKILL an ingest at several points: the index stays readable, holds only whole files, and
rerunning the same command completes it with exactly the chunks of an uninterrupted run."""

import collections
import signal
import subprocess
import time

import pytest

from ragtune import Workspace
from tests.conftest import RAGTUNE, chunk_rows

pytestmark = pytest.mark.slow

TOPICS = ["glaciers", "volcanoes", "harbours", "orchards", "bridges", "comets", "meadows", "foundries"]


def make_corpus(folder, n_files=24):
    folder.mkdir()
    for i in range(n_files):
        topic = TOPICS[i % len(TOPICS)]
        sections = "\n\n".join(
            f"## Part {j}\n\n" + " ".join(f"Fact {i}-{j}-{s} about {topic}: site {i * 100 + j} holds record {s * 13 + i}." for s in range(12))
            for j in range(4))
        (folder / f"doc{i:02d}.md").write_text(f"# Notes on {topic} {i}\n\n{sections}\n")


def settings(ws_dir):
    text = (ws_dir / "ragtune.toml").read_text().replace("commit_chunks = 1024", "commit_chunks = 6")
    (ws_dir / "ragtune.toml").write_text(text)


def versions(ws_dir):
    d = ws_dir / ".ragtune" / "index" / "chunks.lance" / "_versions"
    return len(list(d.glob("*.manifest"))) if d.exists() else 0


def per_source(rows):
    return collections.Counter(r["source"] for r in rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    make_corpus(base / "docs")
    ws = Workspace.init(base / "ref")
    settings(ws.root)
    ws = Workspace(ws.root)
    report = ws.ingest([base / "docs"])
    assert report.index_version > 10  # many commits: there are points to kill at
    rows = chunk_rows(ws)
    return base, versions(ws.root), {(r["source"].rsplit("/", 1)[-1], r["start"], r["end"], r["text"]) for r in rows}, per_source(
        [{**r, "source": r["source"].rsplit("/", 1)[-1]} for r in rows])


def ingest_cmd(base, ws_dir):
    return [*RAGTUNE, "ingest", str(base / "docs"), "--workspace", str(ws_dir)]


@pytest.mark.parametrize("kill_at", ["startup", "first-commit", "midway", "last-commit"])
def test_sigkill_then_rerun_completes_exactly(reference, kill_at, tmp_path):
    base, ref_versions, ref_chunks, ref_counts = reference
    ws_dir = tmp_path / "ws"
    Workspace.init(ws_dir)
    settings(ws_dir)
    proc = subprocess.Popen(ingest_cmd(base, ws_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # version 1 is the empty table; the last version is the keyword index built after the data
    target = {"startup": None, "first-commit": 2, "midway": ref_versions // 2, "last-commit": ref_versions - 1}[kill_at]
    deadline = time.time() + 120
    searched = 0
    while proc.poll() is None and time.time() < deadline:
        if target is None:
            time.sleep(0.3)
            break
        if versions(ws_dir) >= target:
            break
        searched += search_sees_whole_files(ws_dir, ref_counts)
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if kill_at == "midway":
        assert searched > 0, "no search ran during the ingest"

    ws = Workspace(ws_dir)
    if ws.store.exists():
        counts = per_source([{**r, "source": r["source"].rsplit("/", 1)[-1]} for r in chunk_rows(ws)])
        for source, n in counts.items():  # only whole files are ever committed
            assert n == ref_counts[source], (kill_at, source)

    rerun = subprocess.run(ingest_cmd(base, ws_dir), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ws = Workspace(ws_dir)
    rows = chunk_rows(ws)
    assert len(rows) == len(ref_chunks) and len({r["id"] for r in rows}) == len(rows)  # no duplicates
    assert {(r["source"].rsplit("/", 1)[-1], r["start"], r["end"], r["text"]) for r in rows} == ref_chunks
    assert ws.search("records about comets", k=3)[0].text  # keyword index and vectors are usable
    assert ws.stats().documents == len(ref_counts)


def search_sees_whole_files(ws_dir, ref_counts) -> int:
    """A search during the ingest sees a committed version: every source in it is complete."""
    from ragtune.errors import WorkspaceError

    try:
        ws = Workspace(ws_dir)
        hits = ws.search("site record about glaciers", k=5, mode="hybrid")
    except WorkspaceError:  # nothing committed yet
        return 0
    counts = per_source([{**r, "source": r["source"].rsplit("/", 1)[-1]} for r in chunk_rows(ws)])
    for h in hits:
        assert counts[h.source.rsplit("/", 1)[-1]] == ref_counts[h.source.rsplit("/", 1)[-1]]
    return 1
