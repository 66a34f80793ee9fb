"""MLflow tracking of run folders: params = the fully resolved config, metrics = the aggregates,
artifacts = the run folder (run.json, metrics.json, predictions.jsonl).

The default store is local, inside the workspace: ``sqlite:///.ragtune/mlflow.db`` with artifacts
in ``.ragtune/mlartifacts/`` (browse it with ``mlflow ui --backend-store-uri sqlite:///.ragtune/mlflow.db``).
Logging is idempotent: a run already logged (tag ``ragtune.run_id``) is not logged twice, so a
resumed sweep can log what an interruption left unlogged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.experiment.runs import RUNS_DIR, Run, eval_run_id, record_run


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"retrieve": {"k": 5}}`` -> ``{"retrieve.k": 5}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def metric_name(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / `` and space: ``recall@k`` -> ``recall_at_k``."""
    return re.sub(r"[^\w\-./ ]", "_", name.replace("@", "_at_"))


class Tracker:
    """Logs finished runs to one MLflow tracking store."""

    def __init__(self, uri: str, state_dir: Path) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("MLflow is not installed: `pip install mlflow-skinny sqlalchemy alembic`, "
                              "or set [experiment] tracking_uri = \"none\" in ragtune.toml") from None
        for name in ("mlflow", "alembic"):  # set after the import: mlflow configures its loggers on import
            logging.getLogger(name).setLevel(logging.WARNING)
        self.local = not uri
        self.uri = uri or f"sqlite:///{state_dir / 'mlflow.db'}"
        self.artifacts = state_dir / "mlartifacts"
        self.client = MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.artifacts / name).resolve().as_uri() if self.local else None
        return self.client.create_experiment(name, artifact_location=location)

    def log(self, run: Run, experiment: str, replace: bool = False) -> str:
        """Log ``run`` once (a run already logged is left alone, or with ``replace`` deleted and
        logged anew); returns the MLflow run id."""
        from mlflow.entities import RunTag

        exp = self.experiment_id(experiment)
        found = self.client.search_runs([exp], f"tags.`ragtune.run_id` = '{run.id}'")
        if found and not replace:
            return found[0].info.run_id
        for old in found:
            self.client.delete_run(old.info.run_id)
        tags = {"ragtune.run_id": run.id, "ragtune.arm": run.info.get("arm", ""), "ragtune.sweep": run.info.get("sweep") or "",
                "ragtune.index_version": str(run.info.get("environment", {}).get("index_version"))}
        rid = self.client.create_run(exp, run_name=run.name, tags=tags).info.run_id
        params = {**flatten(run.info.get("config", {})), "arm": run.info.get("arm"), "qa": run.info.get("qa", {}).get("path"),
                  "questions": run.info.get("qa", {}).get("questions")}
        self._log_batch(rid, _metrics(run.metrics or {}), params,
                        [RunTag(f"env.{k}", str(v)[:5000]) for k, v in flatten(run.info.get("environment", {})).items()])
        self.client.log_artifacts(rid, str(run.path))
        self.client.set_terminated(rid)
        return rid

    def log_training(self, experiment: str, name: str, params: dict[str, Any], metrics: dict[str, Any],
                     losses: list[tuple[int, float]], artifact: Path) -> str:
        """A training run: its settings, final metrics, the loss at every step, and one file (the card)."""
        from mlflow.entities import Metric

        rid = self.client.create_run(self.experiment_id(experiment), run_name=name, tags={"ragtune.model": name}).info.run_id
        values = _metrics(metrics) + [Metric("loss", float(loss), 0, int(step)) for step, loss in losses]
        self._log_batch(rid, values, params)
        self.client.log_artifact(rid, str(artifact))
        self.client.set_terminated(rid)
        return rid

    def _log_batch(self, rid: str, metrics: list, params: dict[str, Any], tags: list | None = None) -> None:
        from mlflow.entities import Param

        for i in range(0, max(len(metrics), 1), 900):  # MLflow takes at most 1000 metrics per call
            self.client.log_batch(rid, metrics=metrics[i:i + 900], tags=(tags or []) if i == 0 else [],
                                  params=[Param(k, str(v)[:6000]) for k, v in params.items()] if i == 0 else [])


def _metrics(values: dict[str, Any]) -> list:
    """The numeric values as MLflow metrics (flags and text are left to params and artefacts)."""
    from mlflow.entities import Metric

    return [Metric(metric_name(k), float(v), 0, 0) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def training_tracker(ws):
    """The ``track`` callback of ``train.finetune.finetune`` for this workspace (None when tracking
    is off): MLflow experiment "finetune", the settings as params ("train.lr", "preference.beta", ...),
    the loss per step, the card."""
    tracker = tracker_for(ws)
    if tracker is None:
        return None

    def track(name: str, settings: dict[str, dict], metrics: dict[str, Any], stats: dict[str, Any], folder: Path) -> None:
        params = {f"{section}.{k}": v for section, values in settings.items() for k, v in flatten(values).items()}
        losses = [(h["step"], h["loss"]) for h in stats["history"]]
        tracker.log_training("finetune", name, params, metrics, losses, folder / "card.json")

    return track


def tracker_for(ws) -> Tracker | None:
    """The workspace's tracker, or None when ``[experiment] tracking_uri = "none"``."""
    uri = ws.config.experiment.tracking_uri
    return None if uri.lower() == "none" else Tracker(uri, ws.state_dir)


def track_eval(ws, qa: Path, result, limit: int | None = None) -> Run:
    """An ``eval qa`` result (an ``EvalResult`` under ``ws``'s settings) as a run folder, and in MLflow."""
    rid = eval_run_id(ws.config, qa, result.arm, limit or 0, bool(result.judge), result.started)
    run = record_run(ws, ws.state_dir / RUNS_DIR / rid, f"{qa.stem}:{result.arm}", result, qa)
    tracker = tracker_for(ws)
    if tracker:
        tracker.log(run, ws.config.experiment.experiment)
    return run
