#!/usr/bin/env python3
"""Store benchmark, one run on one machine: the same BEIR corpus in LanceDB (local folder), LanceDB on
S3 (SeaweedFS on loopback) and pgvector (PostgreSQL 18 on loopback) — retrieval quality per mode,
dense recall@10 against exact search, query latency, ingest time from cached embeddings — and the Ray
ingest engine with 1 and 2 embedding actors next to the local engine (throughput, identical output).
Every server is started here (tests/servers.py) and stopped at the end.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/stores.py --beir ../shared/data/scifact [--ray-docs 1500]

The embeddings are computed once (the first, local LanceDB run fills the embedding cache); every store
then ingests from a copy of that cache, so its ingest time is chunking + store writes + index builds.
"""
from __future__ import annotations

import argparse, os, platform, shutil, sqlite3, sys, tempfile, time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is bundled; never reach the Hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/servers.py

import numpy as np
from rich.console import Console
from rich.table import Table

import ragtune
from common import save_results, utc_stamp
from ragtune.config import CONFIG_FILE, render_toml
from ragtune.evaluate.beir import load_beir
from ragtune.evaluate.retrieval import evaluate_beir
from retrieval import MODES, pct, reduced_beir
from tests import servers

STORES = ("lancedb", "lancedb-s3", "pgvector")
PACKAGES = ["ragtune", "lancedb", "pylance", "psycopg", "pyarrow", "ray", "onnxruntime", "numpy"]
S3_KEY_ENV, S3_SECRET_ENV = "RAGTUNE_BENCH_S3_KEY", "RAGTUNE_BENCH_S3_SECRET"
console = Console(width=None if sys.stdout.isatty() else 140)


def workspace(folder: Path, **sections: dict) -> Path:
    """A workspace at ``folder`` whose ragtune.toml has the default settings plus ``sections``."""
    ws = ragtune.Workspace.init(folder, force=True)  # a rerun over --work rewrites the settings (new server ports)
    config = ws.config
    for section, values in sections.items():
        config = config.override(section, **values)
    (folder / CONFIG_FILE).write_text(render_toml(config))
    return folder


def store_settings(name: str, pg: servers.Postgres | None, s3: servers.S3 | None) -> dict:
    if name == "lancedb":
        return {}
    if name == "lancedb-s3":
        os.environ[S3_KEY_ENV], os.environ[S3_SECRET_ENV] = s3.key, s3.secret
        return {"uri": f"s3://{s3.bucket}/bench/index", "s3_endpoint": s3.endpoint, "s3_allow_http": True,
                "s3_key_env": S3_KEY_ENV, "s3_secret_env": S3_SECRET_ENV}
    return {"backend": "pgvector", "url": pg.pgvector_database(), "table": "scifact"}


def measure_store(name: str, args, work: Path, settings: dict, cache: Path | None, queries: list[str]) -> dict:
    """Ingest (from a copy of ``cache`` when given) and evaluate every mode; then latency at k=10."""
    parent = workspace(work / f"ws-{name}", store=settings)
    scratch = work / f"scratch-{name}"
    if cache is not None:
        (scratch / ".ragtune" / "cache").mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(cache) as src, sqlite3.connect(scratch / ".ragtune" / "cache" / "embeddings.sqlite") as dst:
            src.backup(dst)  # a consistent copy, whatever is still in the source's write-ahead log
    out: dict = {"modes": {}}
    for mode in MODES:
        r = evaluate_beir(args.beir, args.split, mode=mode, k=100, scratch=scratch, workspace=parent).to_dict()
        if mode == MODES[0]:  # the first call ingests; the others find the index up to date
            out.update(ingest_s=r["timings"]["ingest_s"], chunks_embedded=r["timings"]["chunks_embedded"], chunks=r["chunks"])
        out["modes"][mode] = {**{k: r["metrics"][k] for k in ("ndcg@10", "recall@100", "mrr@10")},
                              "eval_p50_ms": r["timings"]["query_p50_ms"], "eval_p99_ms": r["timings"]["query_p99_ms"],
                              "eval_depth": r["chunks_per_query"]}
    ws = ragtune.Workspace(scratch)
    retriever = ws.retriever
    for mode in MODES:  # what a served question costs: k=10, the default candidates per retriever
        retriever.search(queries[0], k=10, mode=mode)
        ms = []
        for q in queries:
            t = time.perf_counter()
            retriever.search(q, k=10, mode=mode)
            ms.append((time.perf_counter() - t) * 1000)
        out["modes"][mode].update({f"k10_{k}": v for k, v in pct(ms).items()})
    out["workspace"] = ws
    return out


def dense_recall(ws, vectors: np.ndarray, exact: list[list[str]], k: int = 10) -> float:
    """Share of the exact top-``k`` chunk ids that the store's dense search returns."""
    ws.store.pin()
    found = [len({h.chunk_id for h in ws.store.dense(v, k)} & set(e)) / k for v, e in zip(vectors, exact)]
    return float(np.mean(found))


def exact_top(ws, vectors: np.ndarray, k: int = 10) -> list[list[str]]:
    """Brute-force top-``k`` chunk ids by cosine over every stored vector (numpy)."""
    rows = ws.store.rows(["id", "vector"])
    ids = [r["id"] for r in rows]
    matrix = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    scores = vectors @ matrix.T
    return [[ids[i] for i in np.argsort(-s)[:k]] for s in scores]


def ray_runs(args, work: Path) -> dict:
    """The first ``--ray-docs`` documents ingested by the local engine and by Ray with 1 and 2 embedding
    actors (no embedding cache: embedding is the work being spread); throughput and identical output."""
    docs = reduced_beir(args.beir, args.split, args.ray_docs, work / "ray-corpus")
    corpus = load_beir(docs, args.split).corpus
    out: dict = {"docs": args.ray_docs}
    with servers.ray_head(cpus=os.cpu_count() or 2) as head:
        out["head_start_s"] = round(head.start_s, 2)
        runs = {"local": {}, "ray-1": {"engine": "ray", "ray_address": head.address, "ray_actors": 1},
                "ray-2": {"engine": "ray", "ray_address": head.address, "ray_actors": 2}}
        rows = {}
        for name, ingest in runs.items():
            ws = ragtune.Workspace(workspace(work / f"ray-{name}", ingest={**ingest, "record_id_field": "_id",
                                             "record_title_field": "title", "record_text_field": "text",
                                             "record_metadata_fields": [], "include": [], "max_file_mb": 1024.0}))
            ws.embedder.embed(["warm-up: load the model before timing"])
            t = time.perf_counter()
            report = ws.ingest([corpus])
            seconds = time.perf_counter() - t
            out[name] = {"seconds": round(seconds, 2), "chunks": report.chunks_embedded,
                         "chunks_per_s": round(report.chunks_embedded / seconds, 1), "engine": report.engine}
            rows[name] = {r["id"]: r for r in ws.store.rows(["id", "text", "vector"])}
            console.print(f"  {name}: {out[name]}")
    local = rows["local"]
    for name in ("ray-1", "ray-2"):
        same_ids = rows[name].keys() == local.keys()
        same_text = same_ids and all(rows[name][i]["text"] == local[i]["text"] for i in local)
        diff = max(float(np.abs(np.asarray(rows[name][i]["vector"]) - np.asarray(local[i]["vector"])).max()) for i in local) \
            if same_ids else None
        out[name].update(same_ids=same_ids, same_texts=same_text, max_vector_diff=diff)
    out["ray2_over_ray1"] = round(out["ray-2"]["chunks_per_s"] / out["ray-1"]["chunks_per_s"], 2)
    out["ray2_over_local"] = round(out["ray-2"]["chunks_per_s"] / out["local"]["chunks_per_s"], 2)
    return out


def show(res: dict) -> None:
    base = res["stores"]["lancedb"]["modes"]
    t = Table(title=f"stores on {res['dataset']} ({res['stores']['lancedb']['chunks']} chunks, {res['queries']} queries)")
    for c in ("store", "mode", "nDCG@10", "Δ vs local", "recall@100", "p50 ms (k=10)", "p99 ms (k=10)", "dense recall@10"):
        t.add_column(c)
    for name, s in res["stores"].items():
        for mode, m in s["modes"].items():
            delta = f"{m['ndcg@10'] - base[mode]['ndcg@10']:+.4f}" if name != "lancedb" else ""
            t.add_row(name, mode, f"{m['ndcg@10']:.4f}", delta, f"{m['recall@100']:.4f}", f"{m['k10_p50_ms']:.1f}",
                      f"{m['k10_p99_ms']:.1f}", f"{s['dense_recall@10']:.4f}" if mode == "dense" else "")
    console.print(t)
    i = Table(title="ingest")
    for c in ("store", "seconds", "chunks embedded", "note"):
        i.add_column(c)
    i.add_row("lancedb (embedding)", f"{res['embedding_run_s']:.1f}", str(res["stores"]["lancedb"]["chunks"]), "fills the cache")
    for name, s in res["stores"].items():
        i.add_row(name, f"{s['ingest_s']:.1f}", str(s["chunks_embedded"]), "from cached embeddings")
    console.print(i)
    if "ray" in res:
        r = res["ray"]
        console.print(f"Ray ingest of {r['docs']} docs: local {r['local']['chunks_per_s']} chunks/s, 1 actor "
                      f"{r['ray-1']['chunks_per_s']}, 2 actors {r['ray-2']['chunks_per_s']} (2/1 = {r['ray2_over_ray1']}x); "
                      f"identical ids/texts: {r['ray-2']['same_ids'] and r['ray-2']['same_texts']}, "
                      f"max vector diff {r['ray-2']['max_vector_diff']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", type=Path, required=True, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, from {', '.join(STORES)}")
    ap.add_argument("--ray-docs", type=int, default=1500, help="documents for the Ray comparison (0 = skip it)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    names = [s for s in args.stores.split(",") if s]
    if names[0] != "lancedb":
        sys.exit("--stores must start with lancedb: it fills the embedding cache and is the reference")
    work = args.work or Path(tempfile.mkdtemp(prefix="ragtune-stores-"))
    work.mkdir(parents=True, exist_ok=True)
    data = load_beir(args.beir, args.split)
    queries = list(data.queries.values())
    res: dict = {"dataset": data.name, "queries": len(queries), "started": utc_stamp(), "args": {k: str(v) for k, v in vars(args).items()},
                 "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
                 "packages": {p: _version(p) for p in PACKAGES}, "stores": {}}
    try:
        with servers.postgres({"shared_buffers": "512MB", "maintenance_work_mem": "512MB"}) as pg, servers.s3() as s3:
            # the embedding run: local LanceDB, empty cache; its ingest time includes embedding every chunk
            t = time.perf_counter()
            ref = measure_store("embedding-run", args, work, {}, None, queries[:1])
            res["embedding_run_s"] = round(ref["ingest_s"], 1)
            console.print(f"embedding run: {ref['chunks']} chunks embedded in {ref['ingest_s']:.1f} s ({time.perf_counter() - t:.0f} s with eval)")
            cache = work / "scratch-embedding-run" / ".ragtune" / "cache" / "embeddings.sqlite"
            query_vectors = np.asarray([ref["workspace"].embedder.embed_query(q) for q in queries], dtype=np.float32)
            exact = exact_top(ref["workspace"], query_vectors)
            for name in names:
                console.print(f"[bold]{name}[/bold]")
                s = measure_store(name, args, work, store_settings(name, pg, s3), cache, queries)
                s["dense_recall@10"] = dense_recall(s.pop("workspace"), query_vectors, exact)
                res["stores"][name] = s
                console.print(f"  ingest {s['ingest_s']:.1f} s, " + ", ".join(f"{m} nDCG@10 {v['ndcg@10']:.4f} p50 {v['k10_p50_ms']:.1f} ms"
                                                                      for m, v in s["modes"].items()))
            if "pgvector" in names:
                res["pgvector_server"] = _pg_version(pg)
        if args.ray_docs:
            res["ray"] = ray_runs(args, work)
    except servers.Unavailable as e:
        sys.exit(f"a server did not start: {e}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    res["finished"] = utc_stamp()
    show(res)
    path = save_results(args.out, f"stores-{data.name}", res, res["started"])
    console.print(f"saved {path}")


def _pg_version(pg: servers.Postgres) -> dict:
    import psycopg

    with psycopg.connect(pg.new_database()) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
    return {"postgresql": server, "pgvector": vector, "settings": {"shared_buffers": "512MB", "maintenance_work_mem": "512MB"}}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
