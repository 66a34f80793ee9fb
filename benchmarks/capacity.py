#!/usr/bin/env python3
"""Capacity plan measurements (issue 16, docs/scale.md): index build time, query p50/p99, dense
recall@10 and memory per million chunks for the LanceDB and pgvector stores at 10k, 100k and 1M
synthetic chunks, and the extrapolation to 10M and 100M chunks with its assumptions.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/capacity.py \
        [--sizes 10000,100000,1000000] [--backends lancedb,pgvector] [--queries 200] [--max-seconds 1800]

Every (backend, size) point runs in a process of its own, so its RSS is its own. The vectors are
synthetic (clustered, unit length, 384-d like MiniLM's) and so are the texts, so no embedding model
runs: the figures are the stores' alone.
"""
from __future__ import annotations

import argparse, gc, hashlib, json, math, os, platform, shutil, subprocess, sys, tempfile, time
from importlib import metadata
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers
from common import save_results, utc_stamp
from ragtune.config import IngestConfig, RetrieveConfig, StoreConfig
from ragtune.retrieve import retrieve
from ragtune.store import BACKENDS, chunk_id, open_store
from ragtune.store.lancedb import IN_MEMORY_MAX_ROWS
from ragtune.store.pgvector import EF_SEARCH_MIN
from ragtune.types import Chunk

DIM, CENTRES, NOISE, QUERY_NOISE = 384, 1000, 0.052, 0.026  # NOISE: a point's cosine to its centre ~0.7
VOCAB, ZIPF_S, STOP_RANKS, CHUNKS_PER_FILE, K = 20_000, 1.0, 100, 100, 10
PG_SETTINGS = {"shared_buffers": "1GB", "maintenance_work_mem": "4GB", "work_mem": "64MB", "effective_cache_size": "4GB",
               "max_wal_size": "4GB", "checkpoint_timeout": "15min"}
PACKAGES = ["ragtune", "lancedb", "pyarrow", "psycopg", "numpy"]
TARGETS = (10_000_000, 100_000_000)
console = Console(width=None if sys.stdout.isatty() else 150)


class Corpus:
    """Deterministic synthetic chunks. Vectors: one of ``CENTRES`` random unit centres plus gaussian
    noise, normalised (clusters, as real embeddings have, so HNSW meets neighbourhoods, not noise).
    Texts: 30-60 words of a pseudo-vocabulary drawn with Zipf's law, so the keyword indexes see
    realistic posting lists; queries take 3-6 words past the most frequent ranks (real queries and
    the 'english' text search config leave stop words out)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.centres = _unit(np.random.default_rng([seed, 0]).standard_normal((CENTRES, DIM), np.float32))
        syllables = [c + v for c in "klmnprtv" for v in "aiou"]  # CV syllables: words the stemmers leave alone
        self.words = np.array(["".join(syllables[int(d, 32)] for d in np.base_repr(i + 32, 32)) for i in range(VOCAB)])
        p = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF_S
        self.p, self.p_query = p / p.sum(), np.where(np.arange(VOCAB) < STOP_RANKS, 0, p) / p[STOP_RANKS:].sum()

    def points(self, rng, n: int) -> np.ndarray:
        return _unit(self.centres[rng.integers(0, CENTRES, n)] + rng.normal(0, NOISE, (n, DIM)).astype(np.float32))

    def texts(self, rng, n: int, low: int, high: int, p) -> list[str]:
        lengths = rng.integers(low, high + 1, n)
        words = self.words[rng.choice(VOCAB, size=int(lengths.sum()), p=p)]
        ends = np.cumsum(lengths)
        return [" ".join(words[e - n_words:e]) for e, n_words in zip(ends, lengths)]

    def batch(self, b: int, files: int, total: int) -> tuple[list[tuple[str, str, list[Chunk]]], np.ndarray]:
        """Commit batch ``b``: ``files`` whole files of ``CHUNKS_PER_FILE`` chunks (the corpus ends at ``total``)."""
        rng = np.random.default_rng([self.seed, 2, b])
        first = b * files * CHUNKS_PER_FILE
        n = min(files * CHUNKS_PER_FILE, total - first)
        vectors, texts = self.points(rng, n), self.texts(rng, n, 30, 60, self.p)
        out = []
        for f in range(first // CHUNKS_PER_FILE, (first + n - 1) // CHUNKS_PER_FILE + 1):
            source, lo = file_source(f), f * CHUNKS_PER_FILE - first
            chunks = [Chunk(source, source, f"file {f}", (), None, 0, len(t), t, len(t.split()))
                      for t in texts[lo:lo + CHUNKS_PER_FILE]]
            out.append((source, file_key(source), chunks))
        return out, vectors

    def queries(self, n: int) -> tuple[np.ndarray, list[str]]:
        """Noisy copies of held-out points (drawn as the corpus is, never inserted) and 3-6 word texts."""
        rng = np.random.default_rng([self.seed, 1])
        held = self.points(rng, n)
        return _unit(held + rng.normal(0, QUERY_NOISE, held.shape).astype(np.float32)), self.texts(rng, n, 3, 6, self.p_query)

    def describe(self) -> dict:
        return {"vectors": f"{DIM}-d float32: one of {CENTRES} random unit centres (uniform) + N(0, {NOISE}) per dimension, "
                           "normalised; seeded per commit batch",
                "texts": f"30-60 words (uniform) from a {VOCAB}-word pseudo-vocabulary (CV syllables), Zipf s={ZIPF_S}",
                "queries": f"held-out points + N(0, {QUERY_NOISE}), normalised; texts of 3-6 words, Zipf over ranks >= {STOP_RANKS}",
                "files": f"{CHUNKS_PER_FILE} chunks per source file", "seed": self.seed}


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def file_source(f: int) -> str:
    return f"synthetic/{f:07d}.txt"


def file_key(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def global_id(g: int) -> str:
    """The chunk id of the corpus's ``g``-th chunk, as the store writes it."""
    f, i = divmod(g, CHUNKS_PER_FILE)
    return chunk_id(file_source(f), file_key(file_source(f)), i)


class ExactTopK:
    """Exact top ``K`` by inner product of each query over every vector seen, batch by batch (numpy brute force)."""

    def __init__(self, queries: np.ndarray) -> None:
        self.q = queries
        self.scores = np.full((len(queries), K), -np.inf, np.float32)
        self.ids = np.full((len(queries), K), -1, np.int64)

    def add(self, vectors: np.ndarray, first: int) -> None:
        scores = np.concatenate([self.scores, self.q @ vectors.T], axis=1)
        ids = np.concatenate([self.ids, np.broadcast_to(np.arange(first, first + len(vectors)), (len(self.q), len(vectors)))], axis=1)
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        self.scores, self.ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)

    def id_sets(self) -> list[set[str]]:
        return [{global_id(int(g)) for g in row} for row in self.ids]


# --- one point, in a process of its own --------------------------------------------------------------

def measure_point(args, backend: str, size: int) -> dict:
    """Load ``size`` chunks into a fresh ``backend`` store as ingest commits them, finalize, then search."""
    corpus = Corpus(args.seed)
    qv, qt = corpus.queries(args.queries)
    config = StoreConfig(backend=backend, url=args.pg_url or "", table="capacity")
    path = args.work / f"{backend}-{size}"
    store = open_store(config, path)
    store.ensure("synthetic", f"synthetic-{DIM}", DIM)
    out: dict = {"backend": backend, "chunks": size, "dense_path": dense_path(backend, size)}
    reader = None
    try:
        loaded, load_s, truth = load(store, corpus, size, qv, args.max_seconds)
        out.update(rows_loaded=loaded, load_s=load_s, finished=loaded == size)
        if loaded < size:
            return {**out, "rows_per_s": loaded / load_s, "note": f"not finished in {args.max_seconds:.0f} s: {loaded} rows"}
        out["disk_mb_after_load"] = sizes(store, backend, path)["disk_mb"]
        t = time.perf_counter()
        store.finalize()
        out["finalize_s"] = time.perf_counter() - t
        out["build_s"] = load_s + out["finalize_s"]
        out["rows_per_s"] = size / out["build_s"]
        out.update(sizes(store, backend, path))
        gc.collect()
        rss_before = rss_mb()["rss_mb"]
        reader = open_store(config, path)  # a fresh reader: what a serving process holds
        out.update(search(reader, qv, qt, truth))
        out["memory"] = {"rss_before_open_mb": rss_before, **rss_mb()}
        out["memory"]["store_rss_mb"] = out["memory"]["rss_mb"] - rss_before
        return out
    finally:
        (reader or store).drop()  # the reader's drop ends its snapshot first, which would block a DROP TABLE


def dense_path(backend: str, size: int) -> str:
    if backend == "pgvector":
        return f"HNSW (pgvector defaults m=16, ef_construction=64; ragtune sets ef_search=max(k,{EF_SEARCH_MIN}))"
    return "exact, in-memory numpy matrix" if size <= IN_MEMORY_MAX_ROWS else "exact, Lance flat scan (no ANN index)"


def load(store, corpus: Corpus, size: int, qv: np.ndarray, max_seconds: float) -> tuple[int, float, ExactTopK]:
    """Commit the corpus in ingest's batches (whole files, at least ``commit_chunks`` chunks); only the
    commits are timed. Stops after ``max_seconds`` of committing; returns rows loaded, seconds, exact top-k."""
    files = math.ceil(IngestConfig().commit_chunks / CHUNKS_PER_FILE)
    batches = math.ceil(size / (files * CHUNKS_PER_FILE))
    truth, loaded, spent = ExactTopK(qv), 0, 0.0
    for b in range(batches):
        chunks, vectors = corpus.batch(b, files, size)
        truth.add(vectors, loaded)
        t = time.perf_counter()
        store.commit(chunks, vectors, set())
        spent += time.perf_counter() - t
        loaded += len(vectors)
        if b % max(1, batches // 10) == 0 or loaded == size:
            print(f"  {loaded}/{size} rows in {spent:.1f} s ({loaded / spent:.0f}/s)", file=sys.stderr, flush=True)
        if spent > max_seconds and loaded < size:
            break
    return loaded, spent, truth


class GivenVectors:
    """The embedder ``retrieve`` asks for query vectors: here they are the synthetic ones, looked up by text."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.by_text = dict(zip(texts, vectors))

    def embed_query(self, text: str) -> np.ndarray:
        return self.by_text[text]


def search(store, qv: np.ndarray, qt: list[str], truth: ExactTopK) -> dict:
    """p50/p99 of raw dense and bm25 searches (k=10), and of ``retrieve(mode="hybrid")`` (pin, both searches
    at the ``candidates`` depth, RRF) as the retriever runs it; dense recall@10 against the exact top 10."""
    r, embedder = RetrieveConfig(), GivenVectors(qt, qv)
    store.pin()
    store.dense(qv[0], K)  # warm-up: connections, lazy loads, the in-memory copy
    store.bm25(qt[0], K)
    runs = {"dense": lambda i: store.dense(qv[i], K), "bm25": lambda i: store.bm25(qt[i], K),
            "hybrid": lambda i: retrieve(store, embedder, qt[i], k=K, mode="hybrid", candidates=r.candidates, rrf_k=r.rrf_k)}
    out, found = {}, []
    for mode, run in runs.items():
        ms = []
        for i in range(len(qt)):
            t = time.perf_counter()
            hits = run(i)
            ms.append((time.perf_counter() - t) * 1000)
            if mode == "dense":
                found.append({h.chunk_id for h in hits})
        out[mode] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(np.mean(ms))}
    out["dense_recall@10"] = float(np.mean([len(f & t) / K for f, t in zip(found, truth.id_sets())]))
    out["hybrid_depth"] = r.candidates
    return {"latency": out}


def sizes(store, backend: str, path: Path) -> dict:
    """On disk: the LanceDB folder (after finalize: with the versions that ``optimize`` keeps for 7 days); for
    pgvector the chunks table and the BM25 postings table with their TOAST and indexes, and each kind of index
    (by access method: hnsw, btree)."""
    if backend == "lancedb":
        return {"disk_mb": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20}
    import psycopg

    with psycopg.connect(store.config.url) as conn:
        tables = {t: conn.execute("SELECT pg_total_relation_size(%s)", [f"capacity_{t}"]).fetchone()[0] / 2**20
                  for t in ("chunks", "terms")}
        rows = conn.execute("""SELECT a.amname, sum(pg_relation_size(c.oid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid IN ('capacity_chunks'::regclass, 'capacity_terms'::regclass)
            GROUP BY a.amname""").fetchall()
    indexes = {am: int(b) / 2**20 for am, b in rows}
    return {"disk_mb": sum(tables.values()), "index_mb": indexes, "tables_mb": tables,
            "tables_without_indexes_mb": sum(tables.values()) - sum(indexes.values())}


def rss_mb() -> dict:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}


# --- the run: points, extrapolation, report ------------------------------------------------------------

def run_point(args, backend: str, size: int, work: Path, pg_url: str | None) -> dict:
    """``measure_point`` in a child process; killed (and reported so) when it outlasts its load limit by far
    (finalize and the searches are not stopped by ``--max-seconds``: 1M-chunk searches take minutes)."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--point", f"{backend}:{size}", "--work", str(work), "--pg-url", pg_url or ""]
    console.print(f"[bold]{backend}[/] {size} chunks")
    t, limit = time.perf_counter(), 2 * args.max_seconds + 1200
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "chunks": size, "finished": False, "note": f"killed after {limit:.0f} s"}
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"backend": backend, "chunks": size, "finished": False, "note": f"failed (exit {out.returncode}), see stderr"}
    return {**json.loads(line[7:]), "wall_s": time.perf_counter() - t}


def extrapolate(points: list[dict]) -> dict:
    """10M and 100M chunks per backend from its measured points; the assumptions are returned beside the figures."""
    out = {}
    for backend in sorted({p["backend"] for p in points}):
        done = sorted((p for p in points if p["backend"] == backend and p["finished"]), key=lambda p: p["chunks"])
        if done:
            out[backend] = extrapolate_backend(backend, done, [p for p in points if p["backend"] == backend and not p["finished"]])
    return out


def extrapolate_backend(backend: str, done: list[dict], unfinished: list[dict]) -> dict:
    """From the finished points ``done`` (smallest first); an unfinished bigger point gives the build rate."""
    top = done[-1]
    bigger = [p for p in unfinished if p.get("rows_loaded", 0) > top["chunks"]]
    rate, rate_from = ((bigger[-1]["rows_per_s"], f"the load rate of the unfinished {bigger[-1]['chunks']} point (finalize not included)")
                       if bigger else (top["rows_per_s"], f"the build rate (load + finalize) at {top['chunks']}"))
    ns = [p["chunks"] for p in done]
    a = {"build": f"time linear in chunks at {rate_from}: {rate:.0f} rows/s",
         "bm25": f"latency a + b*chunks, least squares over {ns} (every posting of the query's words is read)",
         "hybrid": "measured hybrid at the largest point plus what its dense and bm25 searches grow by",
         "p99": f"the fitted p50 times the p99/p50 ratio of the largest point ({top['chunks']})",
         "disk": f"linear in chunks from {top['chunks']}", "floor": "no latency below the largest measured point's"}
    if backend == "lancedb":
        same = [p for p in done if p["dense_path"] == top["dense_path"]]
        dense = fit([p["chunks"] for p in same], [p["latency"]["dense"]["p50_ms"] for p in same])
        a["dense"] = f"exact search, latency a + b*chunks over the points searched the same way, {[p['chunks'] for p in same]} ({top['dense_path']})"
        held = [p for p in done if p["chunks"] <= IN_MEMORY_MAX_ROWS]
        per_m = held[-1]["memory"]["store_rss_mb"] / held[-1]["chunks"] * 1e6 if held else None
        a["memory"] = (f"the search process's RSS for the store's in-memory copy (vectors + rows), linear in chunks from "
                       f"{held[-1]['chunks'] if held else '-'}; "
                       f"ragtune holds that copy only up to {IN_MEMORY_MAX_ROWS} rows, above that dense search reads the table from disk")
        a["disk"] += " (the folder after finalize, with the old versions optimize keeps for 7 days: see disk_mb_after_load for the live data)"
    else:
        dense = fit(ns, [p["latency"]["dense"]["p50_ms"] for p in done], log=True)
        a["dense"] = f"HNSW: latency a + b*ln(chunks), least squares over {ns}, the index in RAM"
        per_m = top["index_mb"].get("hnsw", 0) / top["chunks"] * 1e6
        a["memory"] = "the HNSW index must stay in RAM (shared_buffers + page cache) for these latencies: its size, linear in chunks"
    bm25 = fit(ns, [p["latency"]["bm25"]["p50_ms"] for p in done])
    figures = {}
    for n in TARGETS:
        lat = {m: scaled(top["latency"][m], f(n)) for m, f in (("dense", dense), ("bm25", bm25))}
        lat["hybrid"] = {q: top["latency"]["hybrid"][q] + sum(lat[m][q] - top["latency"][m][q] for m in ("dense", "bm25"))
                         for q in ("p50_ms", "p99_ms")}
        figures[str(n)] = {"build_h": n / rate / 3600, "latency": lat, "memory_gb": per_m * n / 1e6 / 1024 if per_m else None,
                           "disk_gb": top["disk_mb"] / top["chunks"] * n / 1024}
    return {"extrapolated_not_measured": True, "memory_mb_per_million": per_m, "assumptions": a, "chunks": figures}


def scaled(measured: dict, p50: float) -> dict:
    """p50 and p99 at a new size: p50 as extrapolated (not below the measured one), p99 in the measured ratio to it."""
    p50 = max(p50, measured["p50_ms"])
    return {"p50_ms": p50, "p99_ms": p50 * measured["p99_ms"] / measured["p50_ms"]}


def fit(ns: list[int], ys: list[float], log: bool = False):
    """y = a + b*n (or a + b*ln n) by least squares; from one point, y = b*n (or a constant)."""
    if len(ns) < 2:
        b, a = (0.0, ys[0]) if log else (ys[0] / ns[0], 0.0)
    else:
        b, a = np.polyfit(np.log(ns) if log else np.asarray(ns, float), ys, 1)
    return lambda n: float(a + b * (math.log(n) if log else n))


def machine() -> dict:
    from ragtune.doctor import cpu_model

    mem = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "ram_gb": mem / 2**20, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": os.getloadavg()}


def pg_versions(url: str) -> dict:
    import psycopg

    with psycopg.connect(url) as conn:
        return {"postgresql": conn.execute("SHOW server_version").fetchone()[0],
                "pgvector": conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]}


def report(res: dict) -> None:
    ms = lambda lat, mode: f"{lat[mode]['p50_ms']:.1f} / {lat[mode]['p99_ms']:.1f}"  # noqa: E731
    t = Table(title=f"Measured ({res['args']['queries']} queries, k={K}; p50 / p99 ms; memory: LanceDB store RSS, pgvector HNSW index)")
    for c in ("store", "chunks", "load s", "finalize s", "rows/s", "dense", "bm25", "hybrid", "recall@10", "memory MB", "disk MB", "note"):
        t.add_column(c)
    for p in res["points"]:
        lat = p.get("latency")
        memory = p["memory"]["store_rss_mb"] if "memory" in p and p["backend"] == "lancedb" else p.get("index_mb", {}).get("hnsw")
        t.add_row(p["backend"], str(p["chunks"]), num(p.get("load_s"), ".1f"), num(p.get("finalize_s"), ".1f"), num(p.get("rows_per_s"), ".0f"),
                  *((ms(lat, m) for m in ("dense", "bm25", "hybrid")) if lat else ("",) * 3),
                  num(lat and lat["dense_recall@10"], ".3f"), num(memory, ".0f"), num(p.get("disk_mb"), ".0f"), p.get("note", ""))
    console.print(t)
    e = Table(title="Extrapolated, not measured (assumptions below; p50 / p99 ms)")
    for c in ("store", "chunks", "build h", "dense", "bm25", "hybrid", "memory GB", "disk GB"):
        e.add_column(c)
    for backend, x in res["extrapolation"].items():
        for n, f in x["chunks"].items():
            e.add_row(backend, n, f"{f['build_h']:.1f}", *(ms(f["latency"], m) for m in ("dense", "bm25", "hybrid")),
                      num(f["memory_gb"], ".1f"), num(f["disk_gb"], ".1f"))
    console.print(e)
    for backend, x in res["extrapolation"].items():
        console.print(f"[bold]{backend}[/] assumptions: " + "; ".join(f"{k}: {v}" for k, v in x["assumptions"].items()))


def num(x, spec: str) -> str:
    return "" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated chunk counts")
    ap.add_argument("--backends", default="lancedb,pgvector")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=1800, help="per point: stop loading after this many seconds of commits")
    ap.add_argument("--work", type=Path, help="scratch folder (kept); default: a temp dir, removed at the end")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--point", help=argparse.SUPPRESS)  # BACKEND:SIZE, in the child process
    ap.add_argument("--pg-url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        backend, size = args.point.split(":")
        print("RESULT " + json.dumps(measure_point(args, backend, int(size))), flush=True)
        return
    sizes_, backends = [int(s) for s in args.sizes.split(",")], [b.strip() for b in args.backends.split(",")]
    if set(backends) - set(BACKENDS):
        ap.error(f"--backends: choose from {', '.join(BACKENDS)}")
    work = (args.work or Path(tempfile.mkdtemp(prefix="ragtune-capacity-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    stamp, started = utc_stamp(), time.perf_counter()
    res: dict = {"command": " ".join([sys.executable, *sys.argv]), "started_utc": stamp, "machine": machine(),
                 "args": {k: str(v) for k, v in vars(args).items() if k not in ("point", "pg_url")},
                 "versions": {p: metadata.version(p) for p in PACKAGES}, "generator": Corpus(args.seed).describe(),
                 "hybrid": "ragtune.retrieve.retrieve(mode='hybrid'): pin, dense and bm25 at [retrieve] candidates, RRF",
                 "points": []}
    try:
        for backend in backends:
            if backend == "pgvector":
                res["points"] += pgvector_points(args, sizes_, work, res)
            else:
                res["points"] += [run_point(args, backend, n, work, None) for n in sizes_]
        res["extrapolation"] = extrapolate(res["points"])
        res["wall_s"], res["machine"]["loadavg_at_end"] = time.perf_counter() - started, os.getloadavg()
        saved = save_results(args.out, "capacity", res, stamp)
        report(res)
        console.print(f"wrote {saved} (and capacity-latest.json) in {res['wall_s']:.0f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def pgvector_points(args, sizes_: list[int], work: Path, res: dict) -> list[dict]:
    """One PostgreSQL server (``PG_SETTINGS``) for every size, a fresh database per point."""
    from tests import servers

    try:
        with servers.postgres(settings=PG_SETTINGS) as pg:
            res["pg_settings"], points = PG_SETTINGS, []
            for n in sizes_:
                url = pg.pgvector_database()
                res["versions"].update(pg_versions(url))
                points.append(run_point(args, "pgvector", n, work, url))
            return points
    except servers.Unavailable as e:
        sys.exit(f"pgvector: {e}")


if __name__ == "__main__":
    main()
