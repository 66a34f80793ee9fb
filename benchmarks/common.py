"""What every benchmark script shares: a UTC stamp for its run, saving its figures as
results/<prefix>-<stamp>.json plus results/<prefix>-latest.json (the one the docs quote), and
running an arm in a process of its own."""
from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path


def utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def save_results(out: Path, prefix: str, res: dict, stamp: str) -> Path:
    """Write ``res`` under both names; returns the stamped file."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (f"{prefix}-{stamp}.json", f"{prefix}-latest.json"):
        (out / name).write_text(json.dumps(res, indent=2) + "\n")
    return out / f"{prefix}-{stamp}.json"


def run_arm(script: str, arm: str) -> dict:
    """Run ``script --arm ARM`` (plus this process's arguments) in its own process, so peak RSS is
    the arm's alone; its figures are the JSON after ``RESULT `` on stdout, with ``wall_s`` added."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, script, "--arm", arm, *sys.argv[1:]], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{arm} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(line[7:]), "wall_s": time.perf_counter() - t}


def hh_pairs(args, encode, tokenizer):
    """(train, held-out) HH-RLHF pairs as (Pair, encoded) for every arm alike: ``import_hh``, split by
    prompt (seed 0, ``args.held_fraction``), the first ``args.train`` / ``args.held`` of each side
    that ``encode(pair, tokenizer, args.max_length)`` accepts (not too long)."""
    from ragtune.errors import DatasetError
    from ragtune.train.preferences import Pair, import_hh, split_pairs

    rows, _ = import_hh(args.data)
    train, held = split_pairs([Pair(r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in rows], args.held_fraction, seed=0)

    def fitting(items, n):
        out = []
        for p in items:
            try:
                out.append((p, encode(p, tokenizer, args.max_length)))
            except DatasetError:
                continue
            if len(out) == n:
                break
        return out

    return fitting(train, args.train), fitting(held, args.held)
