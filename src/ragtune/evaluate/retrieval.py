"""``ragtune eval retrieval``: index a BEIR corpus in a scratch workspace, run its queries,
score the document rankings (a document ranks by its best chunk)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import IndexMismatchError, WorkspaceError
from ragtune.evaluate.beir import load_beir
from ragtune.evaluate.metrics import evaluate_run
from ragtune.progress import Quiet


@dataclass
class BeirResult:
    """A BEIR evaluation: the metrics of the document rankings and what it took to get them."""

    dataset: str
    split: str
    mode: str
    queries: int
    k: int  # documents ranked per query
    documents: int
    chunks: int
    model_id: str
    chunk_tokens: int
    chunks_per_query: int
    metrics: dict[str, float]
    timings: dict[str, float]  # ingest_s, chunks_embedded, query_p50/p95/p99/mean_ms
    workspace: str  # the scratch workspace holding the corpus index

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scratch_workspace(beir_dir: Path, scratch: Path | None, workspace: Path | None):
    """The workspace holding the corpus index: ``scratch``, else inside the current workspace,
    else in the user cache. It takes the current workspace's settings when there is one."""
    from ragtune.config import CONFIG_FILE, Config, render_toml
    from ragtune.files import cache_dir
    from ragtune.workspace import Workspace

    try:
        parent = Workspace(workspace)
    except WorkspaceError:
        if workspace is not None:
            raise
        parent = None
    name = Path(beir_dir).resolve().name
    if scratch is None:
        tag = hashlib.sha1(str(Path(beir_dir).resolve()).encode()).hexdigest()[:8]
        scratch = parent.state_dir / "eval" / f"beir-{name}" if parent else cache_dir() / "beir" / f"{name}-{tag}"
    config = parent.config if parent else Config()
    config = config.override("ingest", record_id_field="_id", record_title_field="title", record_text_field="text",
                             record_metadata_fields=[], include=[], max_file_mb=max(config.ingest.max_file_mb, 1024.0))
    scratch = Path(scratch)
    (scratch / ".ragtune").mkdir(parents=True, exist_ok=True)
    (scratch / CONFIG_FILE).write_text(render_toml(config))
    return Workspace(scratch)


def evaluate_beir(beir_dir: Path, split: str = "test", mode: str | None = None, k: int = 100,
                  scratch: Path | None = None, workspace: Path | None = None, progress=None) -> BeirResult:
    progress = progress or Quiet()
    data = load_beir(beir_dir, split)
    ws = scratch_workspace(beir_dir, scratch, workspace)
    mode = mode or ws.config.retrieve.mode
    t0 = time.perf_counter()
    try:
        report = ws.ingest([data.corpus], progress=progress)
    except IndexMismatchError:  # a scratch index of another model: rebuild it
        ws.store.drop()
        report = ws.ingest([data.corpus], progress=progress)
    ingest_s = time.perf_counter() - t0
    stats = ws.stats()
    depth = max(k, 100)
    n_chunks = int(np.ceil(depth * max(stats.chunks / max(stats.documents, 1), 1.0) * 2))
    ws.config = ws.config.override("retrieve", candidates=n_chunks)
    retriever = ws.retriever
    queries = list(data.queries.items())
    retriever.search(queries[0][1], k=n_chunks, mode=mode)  # warm-up: model and index loaded
    task = progress.task("queries", len(queries))
    run: dict[str, list[str]] = {}
    latencies = []
    for qid, text in queries:
        t = time.perf_counter()
        hits = retriever.search(text, k=n_chunks, mode=mode)
        latencies.append((time.perf_counter() - t) * 1000)
        run[qid] = list(dict.fromkeys(h.doc_id for h in hits))[:depth]
        progress.advance(task)
    lat = np.array(latencies)
    timings = {"ingest_s": round(ingest_s, 3), "chunks_embedded": report.chunks_embedded,
               "query_p50_ms": float(np.percentile(lat, 50)), "query_p95_ms": float(np.percentile(lat, 95)),
               "query_p99_ms": float(np.percentile(lat, 99)), "query_mean_ms": float(lat.mean())}
    return BeirResult(data.name, split, mode, len(queries), depth, stats.documents, stats.chunks, stats.model_id,
                      ws.config.ingest.chunk_tokens, n_chunks, evaluate_run(run, data.qrels), timings, str(ws.root))
