#!/usr/bin/env python3
"""What a sweep shares: retrieval-only sweeps over the same index, and chunk-size sweeps.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sweep.py --squad ../shared/data/squad [--questions 1000]

1. Time ``ragtune experiment run`` (a fresh process each time, tracking on) for ONE retrieval
   configuration (hybrid, k=10) and for EIGHT that differ only in k (1, 3, 5, 10) and mode
   (dense, hybrid) over the same index; alternate them, ``--repeats`` times, and compare medians.
   Target: eight <= 1.5x one.
2. A chunk-size sweep (chunk_tokens 96 and 160 next to the workspace's 256): count the chunk
   texts embedded when the sweep first builds its indexes, then delete those indexes and run it
   again: the second pass must embed nothing (everything comes from the embedding cache).

Writes benchmarks/results/sweep-squad-<stamp>.json and sweep-squad-latest.json.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ragtune
from common import save_results, utc_stamp
from ragtune.evaluate.qa import from_squad, squad_contexts, write_qa
from ragtune.experiment.sweep import load_sweep, run_sweep

RAGTUNE = [sys.executable, "-m", "ragtune.cli"]


def workspace(squad: Path, work: Path) -> ragtune.Workspace:
    root = work / "squad-ws"
    ws = ragtune.Workspace(root) if (root / "ragtune.toml").exists() else ragtune.Workspace.init(root)
    squad_contexts(squad, root / "contexts.jsonl")
    ws.ingest([root / "contexts.jsonl"])
    return ws


def sweep_file(path: Path, qa: Path, body: str) -> Path:
    path.write_text(f'name = "{path.stem}"\nqa = "{qa}"\narm = "retrieval"\n{body}')
    return path


def timed_run(sweep: Path, ws: ragtune.Workspace) -> float:
    t = time.perf_counter()
    subprocess.run([*RAGTUNE, "experiment", "run", str(sweep), "--force", "-w", str(ws.root)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squad", type=Path, required=True, help="folder with questions.jsonl.gz and contexts.jsonl.gz")
    ap.add_argument("--questions", type=int, default=1000, help="questions in the fixed sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, help="keep the workspace here (reused)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    stamp = utc_stamp()
    work = (args.work or Path(tempfile.mkdtemp(prefix="ragtune-sweep-"))).resolve()
    ws = workspace(args.squad, work)
    items = sorted(from_squad(args.squad), key=lambda i: hashlib.sha256(i.id.encode()).hexdigest())[:args.questions]
    qa = work / "qa.jsonl"
    write_qa(items, qa)
    one = sweep_file(work / "one.toml", qa, '[base]\n"retrieve.k" = 10\n"retrieve.mode" = "hybrid"\n')
    eight = sweep_file(work / "eight.toml", qa, '[grid]\n"retrieve.k" = [1, 3, 5, 10]\n"retrieve.mode" = ["dense", "hybrid"]\n')
    timed_run(one, ws)  # warm the OS file cache and the ONNX export
    times: dict[str, list[float]] = {"one": [], "eight": []}
    for _ in range(args.repeats):
        times["one"].append(timed_run(one, ws))
        times["eight"].append(timed_run(eight, ws))
    t1, t8 = statistics.median(times["one"]), statistics.median(times["eight"])
    print(f"retrieval sweep, {len(items)} questions: one config {t1:.2f}s, eight configs {t8:.2f}s -> {t8 / t1:.2f}x (target <= 1.5x)")

    chunks = sweep_file(work / "chunks.toml", qa, '[base]\n"retrieve.k" = 5\n[grid]\n"ingest.chunk_tokens" = [96, 160, 256]\n')
    shutil.rmtree(ws.state_dir / "indexes", ignore_errors=True)
    passes = []
    for n in (1, 2):
        t = time.perf_counter()
        result = run_sweep(ragtune.Workspace(ws.root), load_sweep(chunks), force=True, log=lambda _: None)
        passes.append({"seconds": time.perf_counter() - t, "chunks_embedded": result.chunks_embedded,
                       "chunks_written": {k: r.chunks_written for k, r in result.ingests.items()},
                       "recall@5": {o.run.info["config"]["ingest"]["chunk_tokens"]: o.run.metrics["recall@k"] for o in result.outcomes}})
        print(f"chunk-size sweep pass {n}: {passes[-1]['chunks_embedded']} chunk texts embedded, "
              f"{sum(passes[-1]['chunks_written'].values())} written, {passes[-1]['seconds']:.1f}s; recall@5 {passes[-1]['recall@5']}")
        shutil.rmtree(ws.state_dir / "indexes")

    res = {"dataset": "squad-shared-half", "questions": len(items), "index": ws.stats().__dict__, "started_utc": stamp,
           "command": " ".join([sys.executable, *sys.argv]), "loadavg_at_start": os.getloadavg(),
           "retrieval_sweep": {"one_config_s": times["one"], "eight_configs_s": times["eight"],
                               "median_one_s": t1, "median_eight_s": t8, "ratio": t8 / t1, "target": 1.5},
           "chunk_sweep": passes}
    print(f"wrote {save_results(args.out, 'sweep-squad', res, stamp)} (and -latest)")


if __name__ == "__main__":
    main()
