"""``ragtune cycle``: one turn of the development loop, from what users said to the model served next.

1. **export** the feedback store as demonstrations (corrections, liked answers) and preferences
   (DPO pairs, else KTO thumbs), into ``.ragtune/cycles/ID/``;
2. **train** a candidate from the model in service (``[generate] model`` when it is a registered
   generator, else ``[train] base``): SFT on the demonstrations, then DPO or KTO on top of it, at a
   length that holds what was served (at least ``[generate] context_size`` tokens);
3. **evaluate** the model in service and the candidate on the same question set (the workspace's
   RAG arm, every question tracked as an ``eval qa`` run), next to the candidate's forgetting checks;
4. **decide**: promote the candidate (``[generate] model = CANDIDATE`` in ragtune.toml, so the next
   ``ragtune serve`` answers with it) only when its F1 beats the served model's by ``margin`` and
   the forgetting checks did not flag it; otherwise keep the old one and say why.

Every step is written to ``cycle.json`` as it finishes, so a rerun with the same ``--id`` goes on
from the first unfinished step; the whole turn is one run in the MLflow experiment "cycle" (and the
training and evaluation runs in theirs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ragtune.config import CONFIG_FILE, set_config_value
from ragtune.errors import ConfigError, DatasetError
from ragtune.files import Journal, sha256_file, utc_now

CYCLES_DIR = "cycles"
METHODS = ("auto", "dpo", "kto", "sft")


def served_model(ws) -> str:
    """The generator the workspace serves now ([generate] model)."""
    return ws.config.generate.model


def _trainable_base(ws, model: str) -> str:
    """What the candidate is trained from: the served model when it is a registered generator (it
    goes on learning), else [train] base."""
    from ragtune.models.registry import load_card, registered

    if registered(ws.root, model) and load_card(ws.root, model).task != "reward":
        return model
    return ws.config.train.base


def run_cycle(ws, qa: Path, *, cycle_id: str | None = None, method: str = "auto", margin: float = 0.02,
              limit: int | None = None, log: Callable[[str], None] = print, progress=None, track: bool = True) -> dict[str, Any]:
    """One turn of the loop (see the module's text); returns the cycle's record (also ``cycle.json``)."""
    from ragtune.evaluate.qa import load_qa

    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if margin < -1 or margin > 1:
        raise ConfigError(f"--margin {margin}: a difference in F1, between -1 and 1 (e.g. 0.02)")
    items = load_qa(qa)[:limit]  # a bad question set stops here, before anything is trained
    cycle_id = cycle_id or utc_now().replace(":", "").replace("-", "").replace("+0000", "Z")
    folder = ws.state_dir / CYCLES_DIR / cycle_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cycle.json"
    journal = Journal(path, {"id": cycle_id, "started": utc_now(), "served": served_model(ws), "method": method,
                             "margin": margin, "qa": {"path": str(qa), "sha256": sha256_file(qa), "questions": len(items)}})
    state, step = journal.state, lambda name, work: journal.step(name, work, log)
    if state["qa"]["sha256"] != sha256_file(qa):
        raise DatasetError(f"cycle {cycle_id} was started with another version of {qa}; start a new cycle (no --id) "
                           "or restore the file")

    exported = step("export", lambda: _export(ws, folder, method, log))
    if not exported["sft"] and not exported["preference"]:
        state["decision"] = {"promoted": False, "reason": f"nothing to learn from yet: {exported['summary']}"}
        journal.save()
        log(state["decision"]["reason"])
        return state
    trained = step("train", lambda: _train(ws, state, folder, exported, log))
    evaluated = step("evaluate", lambda: _evaluate(ws, qa, items, state["served"], trained["candidate"], limit, progress, track))
    decision = step("decide", lambda: _decide(ws, state, trained, evaluated, margin))
    state["finished"] = state.get("finished") or utc_now()
    journal.save()
    log(decision["reason"])
    if track:
        _track(ws, state, path)
    return state


def max_length(ws) -> int:
    """Training length for served conversations: they fit the generator's context window by
    construction (prompt + answer), so at least that ([train] max_length if longer)."""
    return max(ws.config.train.max_length, ws.config.generate.context_size)


def _export(ws, folder: Path, method: str, log) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from ragtune.serve.export import NoRows, export
    from ragtune.serve.feedback import open_store
    from ragtune.train.finetune import base_folder

    tokenizer = AutoTokenizer.from_pretrained(str(base_folder(_trainable_base(ws, served_model(ws)), ws.root)))
    out: dict[str, Any] = {"sft": None, "preference": None, "reports": {}}
    wanted = {"auto": ["dpo", "kto"], "dpo": ["dpo"], "kto": ["kto"], "sft": []}[method]
    with open_store(ws) as store:
        counts = store.counts()
        for fmt in ["sft", *wanted]:
            if fmt != "sft" and out["preference"]:
                break
            file = folder / f"{fmt}.jsonl"
            try:
                report = export(store, fmt, file, tokenizer, max_length(ws))
            except NoRows:
                log(f"export {fmt}: none")
                continue
            out["reports"][fmt] = report.as_dict()
            log(f"export {fmt}: {report.rows} rows")
            if fmt == "sft":
                out["sft"] = str(file)
            else:
                out["preference"], out["loss"] = str(file), fmt
    out["summary"] = f"{counts.pop('responses')} answers served, feedback: " + (
        ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none")
    return out


def _train(ws, state: dict[str, Any], folder: Path, exported: dict[str, Any], log) -> dict[str, Any]:
    from ragtune.experiment.tracking import training_tracker
    from ragtune.train.finetune import finetune, finetune_direct, training_state

    base = _trainable_base(ws, state["served"])
    out: dict[str, Any] = {"base": base, "models": []}
    prefix = f"cycle-{state['id']}"
    if exported["sft"]:
        name = f"{prefix}-sft"
        cfg = ws.config.override("train", base=base, max_length=max_length(ws)).train
        if (resume := training_state(ws.root, name, log)) is not None:
            finetune(ws.root, name, Path(exported["sft"]), cfg, resume=resume, log=log, track=training_tracker(ws))
        out["models"].append(name)
        base = name
    if exported["preference"]:
        name = f"{prefix}-{exported['loss']}"
        cfg = ws.config.override("train", base=base, max_length=max_length(ws)).train
        if (resume := training_state(ws.root, name, log)) is not None:
            finetune_direct(ws.root, name, Path(exported["preference"]), cfg, ws.config.preference, exported["loss"],
                            ws.config.rl, resume=resume, log=log, track=training_tracker(ws))
        out["models"].append(name)
    out["candidate"] = out["models"][-1]
    return out


def _evaluate(ws, qa: Path, items, served: str, candidate: str, limit, progress, track: bool) -> dict[str, Any]:
    from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer
    from ragtune.experiment.tracking import track_eval

    out = {}
    for role, model in (("served", served), ("candidate", candidate)):
        mws = ws.with_config(ws.config.override("generate", model=model))
        result = evaluate_qa(items, workspace_answerer(mws, "rag"), progress=progress)
        run = track_eval(mws, qa, result, limit) if track else None
        out[role] = {"model": model, "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
                     "run": run.id if run else None}
    return out


def _decide(ws, state: dict[str, Any], trained: dict[str, Any], evaluated: dict[str, Any], margin: float) -> dict[str, Any]:
    from ragtune.models.registry import load_card

    before, after = evaluated["served"]["metrics"], evaluated["candidate"]["metrics"]
    f1_before, f1_after = before.get("f1", 0.0), after.get("f1", 0.0)
    card = load_card(ws.root, trained["candidate"]).metrics
    flagged = [m for m in trained["models"] if load_card(ws.root, m).metrics.get("forgetting_flagged")]
    delta = f1_after - f1_before
    figures = (f"F1 {f1_before:.3f} ({state['served']}) -> {f1_after:.3f} ({trained['candidate']}), "
               f"{delta:+.3f} on {state['qa']['questions']} questions; margin {margin:+.3f}")
    if flagged:
        promoted, reason = False, f"kept {state['served']}: {', '.join(flagged)} flagged by the forgetting checks; {figures}"
    elif delta < margin:
        promoted, reason = False, f"kept {state['served']}: the candidate did not win by the margin; {figures}"
    else:
        set_config_value(ws.root, "generate", "model", trained["candidate"])
        promoted, reason = True, f"promoted {trained['candidate']} ([generate] model in {CONFIG_FILE}); {figures}"
    return {"promoted": promoted, "reason": reason, "f1_served": f1_before, "f1_candidate": f1_after, "delta": delta,
            "forgetting_flagged": bool(flagged), "candidate_metrics": {k: v for k, v in card.items() if isinstance(v, (int, float))}}


def _track(ws, state: dict[str, Any], path: Path) -> None:
    from ragtune.experiment.tracking import tracker_for

    tracker = tracker_for(ws)
    if tracker is None:
        return
    d = state["steps"]["decide"]
    params = {"served": state["served"], "candidate": state["steps"]["train"]["candidate"], "method": state["method"],
              "margin": state["margin"], "qa": state["qa"]["path"], "qa_sha256": state["qa"]["sha256"],
              "promoted": d["promoted"]}
    metrics = {"f1_served": d["f1_served"], "f1_candidate": d["f1_candidate"], "f1_delta": d["delta"],
               **{f"rows_{k}": v["rows"] for k, v in state["steps"]["export"]["reports"].items()}}
    tracker.log_training("cycle", state["id"], params, metrics, [], path)
