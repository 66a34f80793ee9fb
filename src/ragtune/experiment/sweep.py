"""``ragtune experiment run SWEEP.toml``: evaluate many configurations of the workspace on one
question set, sharing all the work that can be shared, and resume where an interruption stopped.

A sweep file::

    name = "k-and-mode"            # optional; default: the file's name
    qa = "questions.jsonl"         # relative to the sweep file
    arm = "retrieval"              # retrieval | rag | closed-book
    limit = 0                      # first N questions; 0 = all
    judge = false                  # also grade answers with the workspace's [generate] model

    [base]                         # settings for every run, as in ragtune.toml
    generate.max_tokens = 48

    [grid]                         # every combination of these values
    "retrieve.k" = [1, 3, 5, 10]
    "retrieve.mode" = ["dense", "hybrid"]

    [[runs]]                       # and/or a list of runs, each its own settings
    name = "small-chunks"
    "ingest.chunk_tokens" = 128

Sharing: every run over the same chunking and embedder uses one index (the workspace's own when
they match it, else ``.ragtune/indexes/<key>/``, built from the workspace's ingested paths);
embeddings come from the workspace's cache, so an index with another chunk size embeds only the
chunk texts never embedded before; query vectors and dense/BM25 rankings are computed once per
index and question (``RankingMemo``), so runs that differ in k, mode or fusion settings only fuse.

Resume: a run's id hashes its resolved config, the question file's sha256, the arm and the limit;
a run folder with ``metrics.json`` is finished and skipped (``force`` reruns it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.config import Config
from ragtune.errors import ConfigError, WorkspaceError
from ragtune.evaluate.qa_eval import ARMS
from ragtune.experiment.runs import RUNS_DIR, Run, load_run, record_run, settings_id
from ragtune.experiment.tracking import flatten
from ragtune.files import sha256_file

SWEEP_KEYS = {"name", "qa", "arm", "limit", "judge", "base", "grid", "runs"}


@dataclass
class Sweep:
    name: str
    path: Path
    qa: Path
    arm: str = "retrieval"
    limit: int = 0
    judge: bool = False  # grade answers with the workspace's own [generate] model (see evaluate.judge)
    base: dict[str, Any] = field(default_factory=dict)
    variants: list[dict[str, Any]] = field(default_factory=lambda: [{}])  # dotted key -> value, one per run


@dataclass
class PlannedRun:
    id: str
    name: str
    params: dict[str, Any]  # what this run sets beyond the workspace config and [base]
    config: Config


@dataclass
class Outcome:
    planned: PlannedRun
    run: Run
    status: str  # "done" | "skipped"
    seconds: float


@dataclass
class SweepResult:
    outcomes: list[Outcome]
    ingests: dict[str, Any]  # index key -> IngestReport of the indexes the sweep built or refreshed

    @property
    def chunks_embedded(self) -> int:
        return sum(r.chunks_embedded for r in self.ingests.values())


def load_sweep(path: Path) -> Sweep:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    unknown = set(data) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(SWEEP_KEYS))}")
    if "qa" not in data:
        raise ConfigError(f"{path}: missing 'qa' (the question set, a QA JSONL file relative to the sweep file)")
    arm = data.get("arm", "retrieval")
    if arm not in ARMS:
        raise ConfigError(f"{path}: arm = {arm!r} is not valid; choose one of: {', '.join(ARMS)}")
    return Sweep(name=str(data.get("name") or path.stem), path=path, qa=(path.parent / data["qa"]).resolve(), arm=arm,
                 limit=int(data.get("limit", 0)), judge=bool(data.get("judge", False)), base=flatten(data.get("base", {})), variants=_variants(data, path))


def _variants(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    grid = flatten(data.get("grid", {}))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: [grid] {key} must be a non-empty list of values")
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    listed = data.get("runs", [])
    if not isinstance(listed, list) or not all(isinstance(r, dict) for r in listed):
        raise ConfigError(f"{path}: 'runs' must be an array of tables ([[runs]])")
    variants = combos + [flatten(r) for r in listed]
    return variants or [{}]


def apply(config: Config, settings: dict[str, Any], origin: str) -> Config:
    """``config`` with dotted settings (``"retrieve.k": 3``) applied and validated."""
    data = dataclasses.asdict(config)
    for key, value in settings.items():
        section, _, name = key.partition(".")
        if section not in data or not name or "." in name:
            raise ConfigError(f"{origin}: {key!r} is not a setting; write SECTION.KEY with a section of ragtune.toml "
                              f"({', '.join(data)})")
        data[section][name] = value
    return Config.from_dict(data, origin=origin)


def plan(ws, sweep: Sweep) -> list[PlannedRun]:
    base = apply(ws.config, sweep.base, f"{sweep.path} [base]")
    qa_sha = sha256_file(sweep.qa) if sweep.qa.is_file() else ""
    planned = []
    for variant in sweep.variants:
        params = {k: v for k, v in variant.items() if k != "name"}
        config = apply(base, params, f"{sweep.path} run {variant.get('name') or params}")
        label = variant.get("name") or " ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items())
        planned.append(PlannedRun(settings_id(config, qa_sha, sweep.arm, sweep.limit, sweep.judge), f"{sweep.name}:{label}" if label else sweep.name,
                                  params, config))
    ids = [p.id for p in planned]
    if len(set(ids)) < len(ids):
        raise ConfigError(f"{sweep.path}: some runs have identical settings; remove the duplicates")
    return planned


def index_key(config: Config) -> str:
    """What decides an index's content: the chunk-shaping settings and the embedder."""
    shaping = {k: v for k, v in dataclasses.asdict(config.ingest).items() if k != "commit_chunks"}
    blob = json.dumps({"ingest": shaping, "embed": [config.embed.model, config.embed.backend]}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


class Indexes:
    """One retriever per index (the workspace's own, or one built under ``.ragtune/indexes/``), each
    with a ``RankingMemo`` that every run over that index shares."""

    def __init__(self, ws, depth: int, progress=None, log=print) -> None:
        self.ws, self.depth, self.progress, self.log = ws, depth, progress, log
        self.views: dict[str, Any] = {}  # index key -> (workspace view on that index, its retriever)
        self.ingests: dict[str, Any] = {}

    def for_config(self, config: Config):
        """A workspace view with ``config`` on its index, and a retriever sharing the index's memo."""
        key = index_key(config)
        if key not in self.views:
            self.views[key] = self._open(key, config)
        view, retriever = self.views[key]
        store = {f"store.{k}": v for k, v in dataclasses.asdict(view.config.store).items()}  # the view's index
        return (view.with_config(apply(config, store, "sweep")),
                retriever.configured(config.retrieve))

    def _open(self, key: str, config: Config):
        from ragtune.retrieve import RankingMemo, Retriever

        if key == index_key(self.ws.config):
            view = self.ws.with_config(self.ws.config)
            if not view.store.exists() or not view.stats().chunks:
                raise WorkspaceError(f"the index in {view.root} is empty: run `ragtune ingest PATH` before a sweep")
        else:
            from ragtune.config import STATE_DIR

            # an index of its own: under pgvector tables named from its path (store.table cleared), on object
            # storage a prefix under the workspace index's
            uri = config.store.uri and f"{config.store.uri.rstrip('/')}/indexes/{key}"
            view = self.ws.with_config(apply(config, {"store.path": f"{STATE_DIR}/indexes/{key}", "store.table": "",
                                                      "store.uri": uri}, "sweep"))
            report = view.ingest(None, progress=self.progress)  # the workspace's ingested paths; cached embeddings reused
            self.ingests[key] = report
            self.log(f"index {key}: {report.chunks_written} chunks written, {report.chunks_embedded} embedded (the rest from cache)")
        return view, Retriever(view.store, view.embedder, view.config.retrieve, RankingMemo(self.depth))


def run_sweep(ws, sweep: Sweep, force: bool = False, progress=None, log=print) -> SweepResult:
    """Run every planned run not finished yet; each lands in a run folder and in MLflow."""
    from ragtune.evaluate.qa import load_qa
    from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer
    from ragtune.experiment.tracking import tracker_for

    items = load_qa(sweep.qa)[: sweep.limit or None]
    planned = plan(ws, sweep)
    tracker = tracker_for(ws)
    depth = max(max(p.config.retrieve.k, p.config.retrieve.candidates) for p in planned)
    indexes = Indexes(ws, depth, progress, log)
    outcomes = []
    for n, p in enumerate(planned, start=1):
        folder = ws.state_dir / RUNS_DIR / p.id
        t0 = time.perf_counter()
        if (folder / "metrics.json").exists() and not force:
            run, status = load_run(folder), "skipped"
        else:
            view, retriever = (ws.with_config(p.config), None) if sweep.arm == "closed-book" else indexes.for_config(p.config)
            judge = ws.generator if sweep.judge else None  # the workspace's own model grades every run alike
            result = evaluate_qa(items, workspace_answerer(view, sweep.arm, retriever=retriever), progress=progress, judge=judge)
            run = record_run(view, folder, p.name, result, sweep.qa, params=p.params, sweep=sweep.name)
            status = "done"
        if tracker:  # logs what an interruption left unlogged; a rerun (--force) replaces the old entry
            tracker.log(run, sweep.name, replace=status == "done")
        outcomes.append(Outcome(p, run, status, time.perf_counter() - t0))
        log(f"[{n}/{len(planned)}] {status:>7} {p.id} {p.name}")
    return SweepResult(outcomes, indexes.ingests)
