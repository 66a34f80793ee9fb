#!/usr/bin/env python3
"""Retrieval benchmark, one run on one machine: ragtune quality, ingest speed per embedding
backend and query latency, next to plain bm25s, plain sentence-transformers + numpy and
(optionally) the LangChain + Chroma peer, all on the same BEIR folder.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retrieval.py --beir ../shared/data/scifact \
        [--backends onnx-int8,onnx,torch] [--peer-python /work/peer-venv/bin/python] [--limit-docs N]
"""
from __future__ import annotations

import argparse, gzip, json, os, platform, shutil, subprocess, sys, tempfile, time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is bundled; never reach the Hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
from rich.console import Console
from rich.table import Table

import ragtune
from common import save_results, utc_stamp
from ragtune.embed import _bundled_minilm
from ragtune.evaluate.beir import load_beir
from ragtune.evaluate.metrics import evaluate_run
from ragtune.evaluate.retrieval import evaluate_beir

MODES = ("bm25", "dense", "hybrid")  # bm25 first: it embeds no queries, so tokens_seen counts ingest only
PACKAGES = ["ragtune", "lancedb", "onnxruntime", "torch", "sentence-transformers", "bm25s", "numpy"]
console = Console(width=None if sys.stdout.isatty() else 120)


def read_jsonl(path: Path):
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        yield from (json.loads(line) for line in f if line.strip())


def pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def reduced_beir(beir: Path, split: str, n: int, dest: Path) -> Path:
    """A BEIR folder with the first ``n`` docs; qrels keep only those docs and queries still judged relevant."""
    data = load_beir(beir, split)
    out = dest / data.name  # same folder name: the dataset keeps its name
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    docs = [row for _, row in zip(range(n), read_jsonl(data.corpus))]
    (out / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    shutil.copy(beir / "queries.jsonl", out / "queries.jsonl")
    kept = {d["_id"] for d in docs}
    qrels = {q: {d: s for d, s in rels.items() if d in kept} for q, rels in data.qrels.items()}
    rows = [f"{q}\t{d}\t{s}\n" for q, rels in qrels.items() if any(s > 0 for s in rels.values()) for d, s in rels.items()]
    (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return out


def ragtune_backend(beir: Path, split: str, backend: str, work: Path, peak: dict) -> dict:
    """Fresh workspace with ``[embed] backend``; ingest (empty embedding cache) and evaluate every mode."""
    parent = work / f"ws-{backend}"
    shutil.rmtree(parent, ignore_errors=True)  # ours; a leftover would hold a warm embedding cache
    ragtune.Workspace.init(parent)
    toml = parent / "ragtune.toml"
    lines = toml.read_text().splitlines()
    embed_at = lines.index("[embed]")
    at = next(i for i in range(embed_at, len(lines)) if lines[i].startswith("backend ="))
    lines[at] = f'backend = "{backend}"'
    toml.write_text("\n".join(lines) + "\n")
    ws = ragtune.Workspace(parent)
    embedder = ws.embedder  # the same (cached) instance the scratch workspace will use
    embedder.embed(["warm-up: load the model (ONNX export happens here, before any timing)"])
    tokens0 = embedder.tokens_seen
    out: dict = {"modes": {}}
    for mode in MODES:
        r = evaluate_beir(beir, split, mode=mode, k=100, workspace=parent).to_dict()
        if mode == MODES[0]:
            tokens = embedder.tokens_seen - tokens0
            s = r["timings"]["ingest_s"]
            out["ingest"] = {"ingest_s": s, "documents": r["documents"], "chunks": r["chunks"],
                             "chunks_embedded": r["timings"]["chunks_embedded"], "tokens": tokens,
                             "tokens_per_s": tokens / s, **peak_share(tokens / s, peak)}
            out["workspace"] = r["workspace"]
        out["modes"][mode] = {**r["metrics"], **{k: v for k, v in r["timings"].items() if k.startswith("query_")},
                              "chunks_per_query": r["chunks_per_query"]}
    return out


def peak_share(tokens_per_s: float, peak: dict) -> dict:
    flops = tokens_per_s * peak["mflop_per_token"] * 1e6
    return {"gflops": flops / 1e9, "share_of_peak_avx2": flops / (peak["avx2_gflops"] * 1e9),
            "share_of_peak_avx512": flops / (peak["avx512_gflops"] * 1e9)}


def query_latency(scratch: str, queries: dict[str, str], k: int = 10, warmup: int = 5) -> dict:
    ws = ragtune.Workspace(scratch)
    texts = list(queries.values())
    out = {}
    for mode in ("hybrid", "dense", "bm25"):
        for q in texts[:warmup]:
            ws.search(q, k=k, mode=mode)
        lat = []
        for q in texts:
            t = time.perf_counter()
            ws.search(q, k=k, mode=mode)
            lat.append((time.perf_counter() - t) * 1000)
        out[mode] = pct(lat)
    return out


def bm25s_baseline(docs: list[dict], data) -> dict:
    import bm25s, Stemmer

    stemmer = Stemmer.Stemmer("english")
    ids = [d["_id"] for d in docs]
    t = time.perf_counter()
    tokens = bm25s.tokenize([f"{d.get('title', '')} {d['text']}" for d in docs], stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    index_s = time.perf_counter() - t
    run, lat = {}, []
    for qid, text in data.queries.items():
        t = time.perf_counter()
        q = bm25s.tokenize(text, stopwords="en", stemmer=stemmer, show_progress=False)
        found, scores = retriever.retrieve(q, k=min(100, len(ids)), show_progress=False)
        lat.append((time.perf_counter() - t) * 1000)
        run[qid] = [ids[i] for i, s in zip(found[0], scores[0]) if s > 0]  # zero score = no term matched
    return {"index_s": index_s, **evaluate_run(run, data.qrels), **pct(lat)}


def st_baseline(docs: list[dict], data, peak: dict) -> dict:
    """Plain sentence-transformers, one vector per document (no chunking), exact numpy search."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(_bundled_minilm()), device="cpu")
    model.encode(["warm-up"])
    ids = [d["_id"] for d in docs]
    texts = [f"{d.get('title', '')}\n\n{d['text']}" for d in docs]
    tokens = sum(len(x) for x in model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"])
    t = time.perf_counter()
    matrix = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    encode_s = time.perf_counter() - t
    depth = min(100, len(ids))
    run, lat = {}, []
    for qid, text in data.queries.items():
        t = time.perf_counter()
        scores = matrix @ model.encode(text, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        top = np.argpartition(-scores, depth - 1)[:depth]
        top = top[np.argsort(-scores[top])]
        lat.append((time.perf_counter() - t) * 1000)
        run[qid] = [ids[i] for i in top]
    return {"encode_s": encode_s, "tokens": tokens, "tokens_per_s": tokens / encode_s,
            **peak_share(tokens / encode_s, peak), **evaluate_run(run, data.qrels), **pct(lat)}


def peer(python: str, beir: Path, work: Path) -> dict:
    out = work / "peer.json"
    cmd = [python, str(Path(__file__).with_name("peer_langchain.py")), "--beir", str(beir), "--eval", "--out", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.read_text())


def machine() -> dict:
    from ragtune.doctor import cpu_flags, cpu_model

    model, flags = cpu_model(), cpu_flags()
    return {"nproc": os.cpu_count(), "cpu_model": model, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}  # another busy process on the cores skews every timing


def report_tables(res: dict) -> None:
    q = Table(title=f"Quality: {res['dataset']} ({res['split']}, {res['queries']} queries, {res['documents']} docs)")
    for c in ("system", "mode", "nDCG@10", "R@100", "MRR@10", "ΔnDCG vs torch", "p50 ms (eval depth)"):
        q.add_column(c)
    torch_modes = res["ragtune"].get("torch", {}).get("modes", {})
    for backend, r in res["ragtune"].items():
        for mode, m in r["modes"].items():
            delta = f"{m['ndcg@10'] - torch_modes[mode]['ndcg@10']:+.4f}" if backend != "torch" and mode in torch_modes and mode != "bm25" else ""
            q.add_row(f"ragtune {backend}", mode, f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}", f"{m['mrr@10']:.4f}", delta, f"{m['query_p50_ms']:.1f}")
    for name, b in res["baselines"].items():
        q.add_row(name, "bm25" if name == "bm25s" else "dense", f"{b['ndcg@10']:.4f}", f"{b['recall@100']:.4f}", f"{b['mrr@10']:.4f}", "", f"{b['p50_ms']:.1f}")
    if res.get("peer"):
        q.add_row("langchain+chroma", "dense", f"{res['peer']['ndcg@10']:.4f}", "", "", "", f"{res['peer']['query_p50_ms']:.1f}")
    ing = Table(title=f"Ingest / encode (peak: {res['peak']['avx2_gflops']:.1f} GFLOP/s AVX2, {res['peak']['avx512_gflops']:.1f} AVX-512)")
    for c in ("system", "seconds", "chunks", "tokens", "tokens/s", "% peak AVX2", "% peak AVX-512"):
        ing.add_column(c)
    rows = [(f"ragtune {b}", r["ingest"]["ingest_s"], r["ingest"]["chunks"], r["ingest"]) for b, r in res["ragtune"].items()]
    st = res["baselines"]["sentence-transformers"]
    rows.append(("sentence-transformers (encode only)", st["encode_s"], res["documents"], st))
    for name, s, n, m in rows:
        ing.add_row(name, f"{s:.1f}", str(n), str(m["tokens"]), f"{m['tokens_per_s']:.0f}",
                    f"{100 * m['share_of_peak_avx2']:.1f}", f"{100 * m['share_of_peak_avx512']:.1f}")
    ing.add_row("bm25s (index)", f"{res['baselines']['bm25s']['index_s']:.2f}", str(res["documents"]), "", "", "", "")
    if res.get("peer"):
        p = res["peer"]
        ing.add_row(f"langchain+chroma (x{res['peer_ingest_ratio']:.2f} ours)", f"{p['ingest_s']:.1f}", str(p["chunks"]), "", "", "", "")
    lat = Table(title=f"Search k=10, {res['latency_backend']}, query embedding incl.")
    for c in ("mode", "p50 ms", "p95 ms", "p99 ms"):
        lat.add_column(c)
    for mode, m in res["latency_k10"].items():
        lat.add_row(mode, f"{m['p50_ms']:.1f}", f"{m['p95_ms']:.1f}", f"{m['p99_ms']:.1f}")
    for t in (q, ing, lat):
        console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beir", type=Path, required=True, help="BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--backends", default="onnx-int8,onnx,torch", help="comma-separated embedding backends to ingest with")
    ap.add_argument("--limit-docs", type=int, help="smoke test: only the first N corpus documents")
    ap.add_argument("--peer-python", help="interpreter of a venv with LangChain + Chroma: also run peer_langchain.py")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--work", type=Path, help="folder for scratch workspaces (kept); default: a temp dir")
    ap.add_argument("--keep", action="store_true", help="keep the temp scratch folder")
    ap.add_argument("--ghz", type=float, default=2.45, help="core clock for the peak-FLOP figure")
    ap.add_argument("--mflop-per-token", type=float, default=24.0, help="MiniLM-L6 forward cost per token")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    work = (args.work or Path(tempfile.mkdtemp(prefix="ragtune-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stamp = utc_stamp()
    cores = os.cpu_count() or 1
    peak = {"cores": cores, "ghz": args.ghz, "mflop_per_token": args.mflop_per_token,
            "avx2_gflops": cores * args.ghz * 32, "avx512_gflops": cores * args.ghz * 64}
    try:
        beir = reduced_beir(args.beir, args.split, args.limit_docs, work / "data") if args.limit_docs else args.beir.resolve()
        data = load_beir(beir, args.split)
        docs = list(read_jsonl(data.corpus))
        res: dict = {"dataset": data.name, "split": args.split, "limit_docs": args.limit_docs, "documents": len(docs),
                     "queries": len(data.queries), "command": " ".join([sys.executable, *sys.argv]),
                     "started_utc": stamp, "machine": machine(), "peak": peak,
                     "versions": {p: metadata.version(p) for p in PACKAGES}, "ragtune": {}}
        for backend in backends:
            console.print(f"[bold]ragtune {backend}[/]: ingest {len(docs)} docs, evaluate {', '.join(MODES)}")
            res["ragtune"][backend] = ragtune_backend(beir, args.split, backend, work, peak)
        main_backend = "onnx-int8" if "onnx-int8" in backends else backends[0]
        console.print(f"[bold]query latency[/] k=10 on ragtune {main_backend}")
        res["latency_backend"] = main_backend
        res["latency_k10"] = query_latency(res["ragtune"][main_backend]["workspace"], data.queries)
        console.print("[bold]baselines[/]: bm25s, sentence-transformers + numpy")
        res["baselines"] = {"bm25s": bm25s_baseline(docs, data), "sentence-transformers": st_baseline(docs, data, peak)}
        if args.peer_python:
            console.print("[bold]peer[/]: LangChain + Chroma")
            res["peer"] = peer(args.peer_python, beir, work)
            res["peer_ingest_ratio"] = res["peer"]["ingest_s"] / res["ragtune"][main_backend]["ingest"]["ingest_s"]
        torch_modes = res["ragtune"].get("torch", {}).get("modes", {})
        res["ndcg_delta_vs_torch"] = {b: {m: r["modes"][m]["ndcg@10"] - torch_modes[m]["ndcg@10"] for m in ("dense", "hybrid")}
                                      for b, r in res["ragtune"].items() if torch_modes and b != "torch"}
        res["wall_s"], res["machine"]["loadavg_at_end"] = time.perf_counter() - started, os.getloadavg()
        tag = data.name + (f"-first{args.limit_docs}" if args.limit_docs else "")  # a smoke run never overwrites the real latest
        saved = save_results(args.out, f"retrieval-{tag}", res, stamp)
        report_tables(res)
        console.print(f"wrote {saved} (and -latest) in {res['wall_s']:.0f}s")
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            console.print(f"scratch kept in {work}")


if __name__ == "__main__":
    main()
