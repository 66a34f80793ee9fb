#!/usr/bin/env python3
"""RAG or fine-tuning on the shared SQuAD half: `ragtune compare`'s four arms with the bundled SmolLM2-135M.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compare.py --squad ../shared/data/squad [--paragraphs 200]

Every paragraph (950) is ingested as a record, so retrieval has all the distractors; the questions
of a fixed sample of paragraphs (smallest sha256 of the paragraph id) are the question set, split by
`ragtune compare` into train and test by paragraph (every test question's paragraph has other questions in
training). The arms: closed-book base, RAG, fine-tuned (SFT on the training questions), fine-tuned + RAG
(RAFT-style: SFT on question + the top-k retrieved paragraphs -> answer), all on transformers fp32.
Prints and saves (benchmarks/results/compare-squad-<stamp>.json and -latest.json) each arm's EM/F1,
latency and tokens, training time and tokens/s, freshness and forgetting, the recommendation, and the
issue's targets (RAFT arm F1 >= 0.50, RAG >= 3x closed-book, freshness of the RAG arms >= 0.9 vs <= 0.2
for fine-tuning alone, no forgetting flag on the RAFT arm). The comparison is resumable: rerun with the same
--work to go on.
"""
from __future__ import annotations

import argparse
import hashlib
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
from ragtune.evaluate.qa import from_squad, squad_contexts, write_qa
from ragtune.experiment.rag_vs_ft import ARMS, arm_figures, run_compare

console = Console()


def workspace(squad: Path, work: Path, args) -> ragtune.Workspace:
    root = work / "squad-ws"
    ws = ragtune.Workspace(root) if (root / "ragtune.toml").exists() else ragtune.Workspace.init(root)
    ws.config = (ws.config.override("retrieve", k=args.k).override("generate", max_tokens=args.max_tokens)
                 .override("compare", epochs=args.epochs, fresh_questions=args.fresh, test_fraction=args.test_fraction)
                 .override("train", method=args.method, learning_rate=args.lr, batch_size=args.batch))
    if not (root / "contexts.jsonl").exists():
        squad_contexts(squad, root / "contexts.jsonl")
    ws.ingest([root / "contexts.jsonl"])
    return ws


def questions(squad: Path, paragraphs: int, out: Path) -> Path:
    items = from_squad(squad)
    chosen = sorted({i.doc_ids[0] for i in items}, key=lambda p: hashlib.sha256(p.encode()).hexdigest())[:paragraphs]
    keep = set(chosen)
    write_qa([i for i in items if i.doc_ids[0] in keep], out)
    return out


def targets(f: dict[str, dict], fresh_n: int) -> dict[str, bool | None]:
    cb, rag, ft, both = (f.get(a, {}) for a in ARMS)
    ratio = rag.get("f1", 0) / cb["f1"] if cb.get("f1") else None
    return {"ft+rag F1 >= 0.50": both.get("f1", 0) >= 0.5,
            "RAG F1 >= 3x closed-book": None if ratio is None else ratio >= 3,
            "freshness RAG arms >= 0.9": None if not fresh_n else min(rag.get("freshness") or 0, both.get("freshness") or 0) >= 0.9,
            "freshness fine-tuned alone <= 0.2": None if not fresh_n else (ft.get("freshness") or 0) <= 0.2,
            "no forgetting flag on ft+rag": not both.get("forgetting_flagged")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squad", type=Path, required=True, help="folder with questions.jsonl.gz and contexts.jsonl.gz")
    ap.add_argument("--paragraphs", type=int, default=200, help="paragraphs whose questions form the question set")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="share of each paragraph's questions held out")
    ap.add_argument("--k", type=int, default=3, help="retrieved paragraphs per question (RAG and RAFT)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--fresh", type=int, default=20, help="test answers changed in the documents (freshness)")
    ap.add_argument("--max-tokens", type=int, default=32, help="answers are short spans")
    ap.add_argument("--work", type=Path, help="keep the workspace here (a rerun goes on with the comparison)")
    ap.add_argument("--id", default="bench", help="the comparison's id in the workspace: another id in the same --work "
                                                  "is a new comparison on the same index (other --paragraphs, seeds, epochs)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    started, stamp = time.perf_counter(), utc_stamp()
    work = (args.work or Path(tempfile.mkdtemp(prefix="ragtune-compare-"))).resolve()
    ws = workspace(args.squad, work, args)
    qa = questions(args.squad, args.paragraphs, ws.root / f"qa-{args.id}.jsonl")  # a resumed comparison checks its content
    state = run_compare(ws, qa, compare_id=args.id, log=console.print)
    figures = arm_figures(state)
    res = {"dataset": "squad-shared-half", "id": args.id, "paragraphs": args.paragraphs, "index": ws.stats().__dict__,
           "settings": state["settings"], "train_settings": {"method": args.method, "lr": args.lr, "batch": args.batch},
           "split": {k: v for k, v in state["steps"]["split"].items() if k != "test_ids"},
           "command": " ".join([sys.executable, *sys.argv]), "started_utc": stamp, "loadavg_at_start": os.getloadavg(),
           "arms": figures, "training": state["steps"]["train"],
           "freshness": {k: v for k, v in state["steps"]["freshness"].items() if k != "arms"},
           "recommendation": state["recommendation"], "work": str(work)}
    res["targets"] = targets(figures, res["freshness"].get("questions", 0))
    res["wall_s"] = time.perf_counter() - started
    save_results(args.out, "compare-squad", res, stamp)
    split = res["split"]
    t = Table(title=f"SQuAD shared half: {split['train']} training / {split['test']} test questions on {args.paragraphs} "
                    f"paragraphs, k={args.k}, SmolLM2-135M ({args.method}, {args.epochs:g} epochs)")
    for c in ("arm", "EM", "F1", "contains", "prompt tok", "p50 s", "fresh", "train s", "train tok/s", "forgetting"):
        t.add_column(c)
    for arm, f in figures.items():
        tr = state["steps"]["train"].get(arm, {})
        t.add_row(arm, f"{f['em']:.3f}", f"{f['f1']:.3f}", f"{f['contains']:.3f}", f"{f['prompt_tokens']:.0f}",
                  f"{f['latency_p50_ms'] / 1000:.2f}", "–" if f["freshness"] is None else f"{f['freshness']:.2f}"
                  + ("" if f.get("freshness_of_right") is None else f" ({f['freshness_of_right']:.2f} of {f['right_before']} right)")
                  + ("" if f.get("freshness_of_shown") is None else f" ({f['freshness_of_shown']:.2f} of {f['shown']} shown)"),
                  f"{tr['train_s']:.0f}" if tr else "–", f"{tr['tokens_per_s']:.0f}" if tr else "–",
                  "–" if f["forgetting_flagged"] is None else ("flagged" if f["forgetting_flagged"] else "ok"))
    console.print(t)
    for arm, f in figures.items():
        if f.get("fresh_by_kind"):
            console.print(f"  {arm} follows the new value, by kind of fact changed: "
                          + ", ".join(f"{kind} {got}/{of}" for kind, (got, of) in f["fresh_by_kind"].items()))
    console.print(state["recommendation"]["text"], soft_wrap=True)
    for name, ok in res["targets"].items():
        console.print(f"  {'✔' if ok else '✘' if ok is False else '·'} {name}")
    console.print(f"{res['wall_s'] / 60:.1f} min; workspace {work}")


if __name__ == "__main__":
    main()
