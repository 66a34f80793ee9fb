"""``ragtune finetune sft``: data -> checked examples -> base model -> training (resumable) ->
registered model with its card.

Everything happens under a workspace folder ``root`` (no ``Workspace``: the caller assembles the
config); tracking is a callback (``track``), so training knows nothing of MLflow.

Work in progress lives in ``.ragtune/train/NAME/`` (``run.json``: what is being trained, from
what; ``checkpoint/``: the latest resumable state). Only a finished run is registered, in one
rename (``models.registry.register``); then the work folder is removed. A killed run leaves its
work folder: ``resume=True`` continues from the last checkpoint; anything else refuses to start
over it (``restart=True`` discards it).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ragtune.config import STATE_DIR
from ragtune.errors import ConfigError, DatasetError, ModelError
from ragtune.files import sha256_file, write_json
from ragtune.train.distributed import World

WORK_DIR = "train"


@dataclass
class Prepared:
    """Training data checked and encoded for one base model."""

    base: Path  # the base model's folder
    tokenizer: Any
    train: list  # encoded examples
    eval: list
    examples: dict[str, list]  # "train"/"eval": the examples before encoding
    data_sha256: str


# what a finished run reports to its tracker: name, config, metrics, step statistics, registered folder
Track = Callable[[str, Any, dict, dict, Path], None]


def prepare(root: Path, data: Path, cfg, prompt_field: str | None = None, completion_field: str | None = None,
            system: str | None = None) -> Prepared:
    """Load, check and encode the data for ``cfg``'s base model; every problem is raised before
    any training (``DatasetError`` listing them)."""
    from ragtune.train.data import load_examples, overlap, split
    from ragtune.train.sft import encode

    examples = load_examples(data, prompt_field, completion_field, system=system)
    train, held_out = split(examples, cfg.eval_fraction, cfg.seed)
    clashes = overlap(train, held_out)
    if clashes:
        raise DatasetError(f"{data}: {len(clashes)} eval example(s) repeat a train prompt, e.g. {clashes[0]}; "
                           "remove the duplicates (or change --seed)")
    return _encoded(root, data, cfg, train, held_out, encode)


def prepare_preferences(root: Path, data: Path, cfg, task: str = "reward") -> Prepared:
    """``prepare`` for preference data (``train.preferences``): pairs or likes/dislikes, split by prompt."""
    from ragtune.train.preferences import load_preferences, split_pairs
    from ragtune.train.reward import encode_item

    prefs = load_preferences(data, task)
    train, held_out = split_pairs(prefs.pairs or prefs.thumbs, cfg.eval_fraction, cfg.seed)
    return _encoded(root, data, cfg, train, held_out, encode_item)


def _encoded(root: Path, data: Path, cfg, train: list, held_out: list, encode) -> Prepared:
    """Both splits encoded with the base model's tokenizer (``encode(item, tokenizer, max_length)``);
    every item that cannot be is listed in one ``DatasetError``."""
    from transformers import AutoTokenizer

    from ragtune.models.base import materialise_base

    base = materialise_base(cfg.base, root)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    encoded, problems = {}, []
    for part, items in (("train", train), ("eval", held_out)):
        encoded[part] = []
        for item in items:
            try:
                encoded[part].append(encode(item, tokenizer, cfg.max_length))
            except DatasetError as e:
                problems.append(str(e))
    if problems:
        raise DatasetError(f"{data}: {len(problems)} example(s) cannot be trained on:\n  " + "\n  ".join(problems[:10]))
    return Prepared(base, tokenizer, encoded["train"], encoded["eval"], {"train": train, "eval": held_out}, sha256_file(data))


def finetune(root: Path, name: str, data: Path, cfg, resume: bool = False, restart: bool = False, overwrite: bool = False,
             prompt_field: str | None = None, completion_field: str | None = None, system: str | None = None,
             on_step=None, log=print, track: Track | None = None) -> Path:
    """Train ``name`` on ``data`` with ``cfg`` (a ``TrainConfig``) and register it in the workspace
    folder ``root``; returns the model's folder. ``track`` gets the finished run (rank 0 only)."""
    import torch

    from ragtune.train import checkpoint
    from ragtune.train.probe import answer_items, checks_record, forgetting, run_checks
    from ragtune.models.registry import check_name, models_dir, registered
    from ragtune.train.sft import CompletionLoss, build_model, evaluate_loss, stats_json, train_loop

    check_name(name)
    world = World()
    root = Path(root)
    if registered(root, name) and not overwrite:
        raise ModelError(f"a model named {name!r} is already registered; pick another --name, "
                         f"`ragtune models rm {name}`, or --overwrite")
    prepared = prepare(root, data, cfg, prompt_field, completion_field, system)  # bad data stops here, nothing written
    work = root / STATE_DIR / WORK_DIR / name
    run = _start(work, name, data, cfg, resume, restart)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = prepared.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = build_model(prepared.base, cfg, cfg.seed)
    start = None
    if resume and (found := checkpoint.latest(work / "checkpoint")):
        start = checkpoint.load(found, model)
        log(f"resuming {name} from epoch {start['epoch']}, batch {start['batch']} (step {start['stats'].steps})")
    items = answer_items(prepared.examples["eval"], cfg.check_answers)  # held-out prompts with a '#### N' answer
    if "before" not in run:  # the base model (a fresh LoRA adapter changes nothing yet); rank 0 checks
        run["before"] = {} if start is not None else {"eval_loss": evaluate_loss(model, prepared.eval, cfg.batch_size, CompletionLoss(pad)),
                                                      **(run_checks(model, tok, items, cfg, "base", log) if world.rank == 0 else {})}
        if world.rank == 0:
            write_json(work / "run.json", run)
    log(f"training {name}: {len(prepared.train)} examples ({len(prepared.eval)} held out), {cfg.method}, "
        f"base {prepared.base}")
    started = time.perf_counter()
    stats = train_loop(model, prepared.train, cfg, CompletionLoss(pad), eval_set=prepared.eval, on_step=on_step, start=start,
                       on_checkpoint=lambda state: checkpoint.save(work / "checkpoint", model, state))
    if world.rank != 0:  # under torchrun: rank 0 registers and tracks
        return models_dir(root) / name
    before, after = run["before"], run_checks(model, tok, items, cfg, "tuned", log)
    metrics = {"train_loss_last": stats.history[-1]["loss"] if stats.history else None,
               "eval_loss_before": before.get("eval_loss"), "eval_loss_after": stats.eval_loss[-1] if stats.eval_loss else None,
               "tokens_per_s": stats.tokens_per_s, "padding_share": 1 - stats.tokens / max(stats.padded_tokens, 1),
               "steps": stats.steps, "examples_seen": stats.examples, "trained_tokens": stats.trained_tokens,
               "processes": world.size, **forgetting(before, after, cfg.forgetting_threshold)}
    folder = _register(root, name, model, tok, cfg, prepared, metrics, stats, overwrite, checks_record(items, before, after))
    if track is not None:
        track(name, cfg, metrics, stats_json(stats), folder)
    shutil.rmtree(work, ignore_errors=True)
    log(f"registered {name} in {folder} ({time.perf_counter() - started:.0f}s)")
    return folder


def _start(work: Path, name: str, data: Path, cfg, resume: bool, restart: bool) -> dict[str, Any]:
    """The work folder's run.json: new, or the interrupted one when resuming (same data and settings)."""
    wanted = {"name": name, "data": str(Path(data).resolve()), "data_sha256": sha256_file(data), "config": dataclasses.asdict(cfg)}
    path = work / "run.json"
    if World().rank != 0:  # other processes of a torchrun job follow rank 0's decisions
        return json.loads(path.read_text()) if resume and path.exists() else wanted
    if path.exists() and restart:
        shutil.rmtree(work)
    if path.exists():
        previous = json.loads(path.read_text())
        if not resume:
            raise ConfigError(f"an interrupted run of {name!r} is in {work}: add --resume to continue it, "
                              "or --restart to discard it")
        changed = [k for k in ("data_sha256", "config") if previous.get(k) != wanted[k]]
        if changed:
            raise ConfigError(f"--resume: the {' and '.join(changed)} changed since {name!r} started; "
                              "use the same data and settings, or --restart")
        return previous
    if resume:
        raise ConfigError(f"nothing to resume: no interrupted run of {name!r} in {work}")
    work.mkdir(parents=True, exist_ok=True)
    write_json(path, wanted)
    return wanted


def _register(root: Path, name: str, model, tokenizer, cfg, prepared: Prepared, metrics: dict, stats, overwrite: bool,
              checks: dict[str, Any]) -> Path:
    from ragtune.models.base import base_identity
    from ragtune.models.registry import ModelCard, register, staging

    stage = staging(root, name)
    model.save_pretrained(str(stage / ("adapter" if cfg.method == "lora" else "model")))
    tokenizer.save_pretrained(str(stage / "tokenizer"))
    write_json(stage / "checks.json", checks)
    card = ModelCard(name=name, kind=cfg.method, base=base_identity(prepared.base), data_sha256=prepared.data_sha256,
                     config=dataclasses.asdict(cfg), metrics=metrics, train_time_s=stats.seconds)
    return register(root, name, stage, card, overwrite=overwrite)


def finetune_reward(root: Path, name: str, data: Path, cfg, resume: bool = False, restart: bool = False,
                    overwrite: bool = False, on_step=None, log=print, track: Track | None = None) -> Path:
    """Train a reward model ``name`` on preference ``data`` (pairs, rankings or likes/dislikes) with
    ``cfg`` and register it (task "reward"); held-out pairs are scored before and after training."""
    import torch

    from ragtune.models.registry import check_name, models_dir, registered
    from ragtune.train import checkpoint
    from ragtune.train.reward import EncodedPair, PairLoss, ThumbLoss, build_reward_model, evaluate_pairs
    from ragtune.train.sft import stats_json, train_loop

    check_name(name)
    world, root = World(), Path(root)
    if registered(root, name) and not overwrite:
        raise ModelError(f"a model named {name!r} is already registered; pick another --name, "
                         f"`ragtune models rm {name}`, or --overwrite")
    prepared = prepare_preferences(root, data, cfg, "reward")  # bad data stops here, nothing written
    work = root / STATE_DIR / WORK_DIR / name
    run = _start(work, name, data, cfg, resume, restart)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = prepared.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # rewards are read by mask, not pad id
    model = build_reward_model(prepared.base, cfg, cfg.seed)
    objective = PairLoss(pad) if isinstance(prepared.train[0], EncodedPair) else ThumbLoss(pad)
    held_pairs = [e for e in prepared.eval if isinstance(e, EncodedPair)]
    start = None
    if resume and (found := checkpoint.latest(work / "checkpoint")):
        start = checkpoint.load(found, model)
        log(f"resuming {name} from epoch {start['epoch']}, batch {start['batch']} (step {start['stats'].steps})")
    if "before" not in run and world.rank == 0:  # the untrained head: about chance
        run["before"] = evaluate_pairs(model, held_pairs, pad, cfg.batch_size, cfg.seed).metrics() if held_pairs and start is None else {}
        write_json(work / "run.json", run)
    unit = "pairs" if isinstance(objective, PairLoss) else "liked/disliked answers"
    log(f"training reward model {name}: {len(prepared.train)} {unit} ({len(prepared.eval)} held out), {cfg.method}, "
        f"base {prepared.base}")
    started = time.perf_counter()
    stats = train_loop(model, prepared.train, cfg, objective, eval_set=prepared.eval, on_step=on_step, start=start,
                       on_checkpoint=lambda state: checkpoint.save(work / "checkpoint", model, state))
    if world.rank != 0:
        return models_dir(root) / name
    after = evaluate_pairs(model, held_pairs, pad, cfg.batch_size, cfg.seed).metrics() if held_pairs else {}
    before = run.get("before", {})
    metrics = {"train_loss_last": stats.history[-1]["loss"] if stats.history else None,
               "eval_loss_after": stats.eval_loss[-1] if stats.eval_loss else None,
               "accuracy_before": before.get("accuracy"), "accuracy_after": after.get("accuracy"),
               "accuracy_change": after["accuracy"] - before["accuracy"] if "accuracy" in after and "accuracy" in before else None,
               **{f"held_out_{k}" if k == "pairs" else k: v for k, v in after.items() if k != "accuracy"},
               "tokens_per_s": stats.tokens_per_s, "padding_share": 1 - stats.tokens / max(stats.padded_tokens, 1),
               "steps": stats.steps, "examples_seen": stats.examples, "processes": world.size}
    folder = _register_reward(root, name, model, tok, cfg, prepared, metrics, stats, overwrite)
    if track is not None:
        track(name, cfg, metrics, stats_json(stats), folder)
    shutil.rmtree(work, ignore_errors=True)
    log(f"registered {name} in {folder} ({time.perf_counter() - started:.0f}s)")
    return folder


def _register_reward(root: Path, name: str, model, tokenizer, cfg, prepared: Prepared, metrics: dict, stats,
                     overwrite: bool) -> Path:
    from ragtune.models.base import base_identity
    from ragtune.models.registry import ModelCard, register, staging
    from ragtune.train.reward import save_reward_model

    stage = staging(root, name)
    save_reward_model(model, stage, cfg.method)
    tokenizer.save_pretrained(str(stage / "tokenizer"))
    card = ModelCard(name=name, kind=cfg.method, base=base_identity(prepared.base), data_sha256=prepared.data_sha256,
                     config=dataclasses.asdict(cfg), metrics=metrics, train_time_s=stats.seconds, task="reward")
    return register(root, name, stage, card, overwrite=overwrite)
