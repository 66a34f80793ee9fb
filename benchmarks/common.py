"""What every benchmark script shares: a UTC stamp for its run, and saving its figures as
results/<prefix>-<stamp>.json plus results/<prefix>-latest.json (the one the docs quote)."""
from __future__ import annotations

import datetime
import json
from pathlib import Path


def utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def save_results(out: Path, prefix: str, res: dict, stamp: str) -> Path:
    """Write ``res`` under both names; returns the stamped file."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (f"{prefix}-{stamp}.json", f"{prefix}-latest.json"):
        (out / name).write_text(json.dumps(res, indent=2) + "\n")
    return out / f"{prefix}-{stamp}.json"
