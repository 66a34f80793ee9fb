#!/usr/bin/env python3
"""RAG vs closed-book with the bundled generator on the shared SQuAD half.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/qa.py --squad ../shared/data/squad [--n 500] [--judge]

All 950 paragraphs are ingested as records (gold doc id = paragraph id); a fixed sample of
questions (smallest sha256 of the question id) is answered by both arms. Records EM, F1,
contains and Recall@k of the gold paragraph (per retrieval mode); writes JSON to
benchmarks/results/qa-squad-<stamp>.json and qa-squad-latest.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console
from rich.table import Table

import ragtune
from common import save_results, utc_stamp
from ragtune.evaluate.qa import from_squad, squad_contexts
from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer

console = Console()


def workspace(squad: Path, work: Path, k: int, max_tokens: int) -> ragtune.Workspace:
    root = work / "squad-ws"
    ws = ragtune.Workspace(root) if (root / "ragtune.toml").exists() else ragtune.Workspace.init(root)
    ws.config = ws.config.override("retrieve", k=k).override("generate", max_tokens=max_tokens)
    squad_contexts(squad, root / "contexts.jsonl")
    ws.ingest([root / "contexts.jsonl"])
    return ws


def recall_at_k(ws, items, k: int) -> dict[str, float]:
    out = {}
    for mode in ("dense", "bm25", "hybrid"):
        found = sum(bool(set(i.doc_ids) & {h.doc_id for h in ws.search(i.question, k=k, mode=mode)}) for i in items)
        out[mode] = found / len(items)
    return out


def judge_agreement(predictions: list[dict]) -> float | None:
    """Share of parsed verdicts that agree with contains-gold (a proxy for the truth)."""
    pairs = [(p["judge"]["score"], p["contains"]) for p in predictions if p.get("judge", {}).get("parsed")]
    return sum(s == c for s, c in pairs) / len(pairs) if pairs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squad", type=Path, required=True, help="folder with questions.jsonl.gz and contexts.jsonl.gz")
    ap.add_argument("--n", type=int, default=500, help="questions in the fixed sample")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--mode", default="hybrid")
    ap.add_argument("--max-tokens", type=int, default=48, help="answers are short spans")
    ap.add_argument("--judge", action="store_true", help="also grade every answer with the bundled model as LLM judge "
                    "(parse-failure rate, agreement with contains-gold); writes qa-squad-judge-*.json")
    ap.add_argument("--work", type=Path, help="keep the workspace here (reused)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    started, stamp = time.perf_counter(), utc_stamp()
    work = (args.work or Path(tempfile.mkdtemp(prefix="ragtune-qa-"))).resolve()
    items = sorted(from_squad(args.squad), key=lambda i: hashlib.sha256(i.id.encode()).hexdigest())[:args.n]
    ws = workspace(args.squad, work, args.k, args.max_tokens)
    res = {"dataset": "squad-shared-half", "questions": len(items), "k": args.k, "mode": args.mode,
           "max_tokens": args.max_tokens, "command": " ".join([sys.executable, *sys.argv]), "started_utc": stamp,
           "loadavg_at_start": os.getloadavg(), "index": ws.stats().__dict__}
    console.print(f"recall@{args.k} of the gold paragraph, {len(items)} questions")
    res["recall_at_k"] = recall_at_k(ws, items, args.k)
    for arm in ("rag", "closed-book"):
        console.print(f"arm {arm}")
        result = evaluate_qa(items, workspace_answerer(ws, arm, k=args.k, mode=args.mode),
                             judge=ws.generator if args.judge else None).to_dict()
        res[arm] = result["metrics"]
        if args.judge:
            res[arm]["judge_agreement_with_contains"] = judge_agreement(result["predictions"])
        res["generator"] = result["generator"]
        (work / f"predictions-{arm}.json").write_text(json.dumps(result["predictions"], indent=1))
    res["f1_ratio_rag_vs_closed"] = res["rag"]["f1"] / res["closed-book"]["f1"] if res["closed-book"]["f1"] else None
    res["wall_s"] = time.perf_counter() - started
    save_results(args.out, "qa-squad-judge" if args.judge else "qa-squad", res, stamp)
    t = Table(title=f"SQuAD shared half: {len(items)} questions, {res['generator']}, k={args.k} {args.mode}")
    for c in ("arm", "EM", "F1", "contains", "abstain", f"R@{args.k}", "p50 s"):
        t.add_column(c)
    for arm in ("rag", "closed-book"):
        m = res[arm]
        t.add_row(arm, f"{m['em']:.3f}", f"{m['f1']:.3f}", f"{m['contains']:.3f}", f"{m['abstention_rate']:.3f}",
                  f"{m.get('recall@k', 0):.3f}" if arm == "rag" else "", f"{m['total_p50_ms'] / 1000:.2f}")
    console.print(t)
    console.print(f"Recall@{args.k} by mode: " + ", ".join(f"{k} {v:.3f}" for k, v in res["recall_at_k"].items()))
    console.print(f"F1 RAG / closed-book = {res['f1_ratio_rag_vs_closed']:.2f}; predictions in {work}; {res['wall_s']:.0f}s")
    if args.judge:
        for arm in ("rag", "closed-book"):
            m = res[arm]
            console.print(f"judge on {arm}: parse failures {m.get('judge_parse_failures')} of "
                          f"{m.get('judge_parsed', 0) + m.get('judge_parse_failures', 0)} "
                          f"(rate {m.get('judge_parse_failure_rate')}), score {m.get('judge_score')}, "
                          f"agreement with contains {m.get('judge_agreement_with_contains')}")


if __name__ == "__main__":
    main()
