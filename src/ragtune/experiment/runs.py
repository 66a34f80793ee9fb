"""Run folders: every evaluation run, inspectable as plain files.

``.ragtune/runs/<run_id>/`` holds::

    run.json           id, name, sweep, arm, status, params (what the sweep varied), the fully resolved
                       config, the question set (path, sha256, questions), environment (package
                       versions, model ids, index version), started/finished timestamps
    metrics.json       the aggregated metrics (``evaluate.qa_eval.aggregate``); written last, so a run
                       folder without it is unfinished
    predictions.jsonl  one row per question: id, question, answers, prediction, scores, prompt,
                       retrieved chunks, usage, timings

A run is finished when ``metrics.json`` exists; sweeps skip finished runs when resumed.

Provenance lives here too, for sweeps and ``eval qa`` alike: ``settings_id`` (what a run computed:
same settings, questions, arm, limit and judging -> same id; a sweep's run id), ``eval_run_id``
(an ``eval qa`` run: its settings id at a moment), ``environment`` (package versions, model
identities, index version) and ``record_run``, which writes the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ragtune.errors import WorkspaceError
from ragtune.files import package_version, read_jsonl, sha256_file, utc_now, write_json

FORMAT_VERSION = 1
RUNS_DIR = "runs"


@dataclass
class Run:
    """A run folder read back: its description, metrics and (lazily) predictions."""

    path: Path
    info: dict[str, Any]
    metrics: dict[str, Any] | None = None
    _predictions: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return str(self.info.get("id") or self.path.name)

    @property
    def name(self) -> str:
        return self.info.get("name") or self.id

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def predictions(self) -> list[dict[str, Any]]:
        if self._predictions is None:
            path = self.path / "predictions.jsonl"
            self._predictions = [row for _, row in read_jsonl(path, strict=True)] if path.exists() else []
        return self._predictions


def write_run(folder: Path, info: dict[str, Any], predictions: list[dict[str, Any]], metrics: dict[str, Any]) -> Run:
    """Save a finished run: description and predictions first, metrics last (the 'finished' mark)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "run.json", {"format_version": FORMAT_VERSION, **info})
    tmp = folder / ".predictions.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for row in predictions:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, folder / "predictions.jsonl")
    write_json(folder / "metrics.json", metrics)
    return Run(folder, {"format_version": FORMAT_VERSION, **info}, metrics, predictions)


def load_run(path: Path) -> Run:
    path = Path(path)
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkspaceError(f"{path} is not a run folder (no run.json); see `ragtune runs list`") from None
    except ValueError as e:
        raise WorkspaceError(f"{path / 'run.json'} is not valid JSON ({e}); delete the folder and rerun it") from None
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else None
    return Run(path, info, metrics)


def iter_runs(runs_dir: Path) -> Iterator[Run]:
    """Every run folder under ``runs_dir``, oldest first."""
    if not runs_dir.is_dir():
        return
    runs = [load_run(p) for p in runs_dir.iterdir() if (p / "run.json").exists()]
    yield from sorted(runs, key=lambda r: (r.info.get("started", ""), r.id))


def find_run(runs_dir: Path, ref: str) -> Run:
    """A run by folder path, id, unique id prefix or name."""
    if Path(ref).is_dir() and (Path(ref) / "run.json").exists():
        return load_run(Path(ref))
    runs = list(iter_runs(runs_dir))
    for test in (lambda r: r.id == ref, lambda r: r.name == ref, lambda r: r.id.startswith(ref)):
        matches = [r for r in runs if test(r)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise WorkspaceError(f"run {ref!r} is ambiguous: {', '.join(r.id for r in matches[:5])}; give more of the id")
    raise WorkspaceError(f"no run {ref!r} in {runs_dir}; see `ragtune runs list`")


def settings_id(config, qa_sha: str, arm: str, limit: int, judge: bool = False) -> str:
    """Same settings, questions, arm, limit and judging -> same id (the experiment section does not count)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "experiment"}
    blob = json.dumps({"config": settings, "qa": qa_sha, "arm": arm, "limit": limit, **({"judge": True} if judge else {})},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def eval_run_id(config, qa: Path, arm: str, limit: int, judge: bool, started: str) -> str:
    """An ``eval qa`` run's id: its settings id at the moment it started (every evaluation is its own run)."""
    settings = settings_id(config, sha256_file(qa), arm, limit, judge)
    return hashlib.sha1(f"{settings}@{started}".encode()).hexdigest()[:12]


def now() -> str:
    return utc_now("milliseconds")  # runs started in the same second still sort in order


def record_run(ws, folder: Path, name: str, result, qa: Path, *, params: dict[str, Any] | None = None,
               sweep: str | None = None) -> Run:
    """Write the run folder of an ``EvalResult`` obtained with ``ws``'s settings and index."""
    info = {"id": folder.name, "name": name, "sweep": sweep, "arm": result.arm, "judge": result.judge, "status": "finished",
            "params": params or {}, "config": dataclasses.asdict(ws.config),
            "qa": {"path": str(qa), "sha256": sha256_file(qa), "questions": result.questions},
            "environment": environment(ws, result.arm), "started": result.started, "finished": now()}
    return write_run(folder, info, [p.to_dict() for p in result.predictions], result.metrics)


PACKAGES = ("ragtune", "lancedb", "onnxruntime", "sentence-transformers", "llama-cpp-python", "transformers", "peft", "mlflow-skinny")


def environment(ws, arm: str) -> dict[str, Any]:
    """Package versions, model identities and the index version a run used."""
    packages = {name: v for name in PACKAGES if (v := package_version(name))}
    env: dict[str, Any] = {"python": platform.python_version(), "packages": packages}
    if arm != "closed-book":
        meta = ws.store.require_meta()
        env.update(embedder=meta.get("model_id"), index_path=ws.config.store.uri or ws.config.store.path, index_version=ws.store.pinned_version)
    if arm != "retrieval":
        from ragtune.generate import generator_sha256

        env["generator"] = ws.generator.name
        env["generator_sha256"] = generator_sha256(ws.config.generate, ws.root)
    return env
