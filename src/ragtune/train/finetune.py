"""``ragtune finetune sft|reward|dpo|kto``: data -> checked examples -> base model -> training
(resumable) -> registered model with its card.

One driver (``train_and_register``) runs every kind; a ``Recipe`` says what differs: how the data
is read and encoded, which model is built, which objective trains it, what is measured before and
after, and what is saved. ``finetune``, ``finetune_reward`` and ``finetune_direct`` pick the recipe.

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
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ragtune.config import STATE_DIR, env_threads
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


# what a finished run reports to its tracker: name, settings ({"train": ..., other sections}), metrics,
# step statistics, registered folder
Track = Callable[[str, dict, dict, dict, Path], None]


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
    return _encoded(root, data, cfg, train, held_out, each(encode))


def prepare_preferences(root: Path, data: Path, cfg, task: str = "reward") -> Prepared:
    """``prepare`` for preference data (``train.preferences``), split by prompt, encoded for ``task``:
    reward models read whole conversations (``reward.encode_item``); DPO labels the answers of pairs
    (``direct.encode_choice``); KTO trains on liked/disliked answers (a pair gives one of each) and
    is measured on held-out pairs when the file has pairs."""
    from ragtune.train.direct import encode_answers, encode_choice, thumbs_of
    from ragtune.train.preferences import load_preferences, split_pairs
    from ragtune.train.reward import encode_item

    prefs = load_preferences(data, task)
    train, held_out = split_pairs(prefs.pairs or prefs.thumbs, cfg.eval_fraction, cfg.seed)
    if task == "reward":
        return _encoded(root, data, cfg, train, held_out, each(encode_item))
    if task == "dpo":
        return _encoded(root, data, cfg, train, held_out, each(encode_choice))
    return _encoded(root, data, cfg, train, held_out, lambda items, tok, n: encode_answers(thumbs_of(items), tok, n),
                    each(encode_choice) if prefs.pairs else None)


def each(encode_one):
    """A list encoder (``(items, tokenizer, max_length) -> (encoded, problems)``) from one for single items."""
    def encode(items: list, tokenizer, max_length: int) -> tuple[list, list[str]]:
        encoded, problems = [], []
        for item in items:
            try:
                encoded.append(encode_one(item, tokenizer, max_length))
            except DatasetError as e:
                problems.append(str(e))
        return encoded, problems

    return encode


def _encoded(root: Path, data: Path, cfg, train: list, held_out: list, encode, encode_held_out=None) -> Prepared:
    """Both splits encoded with the base model's tokenizer (``encode(items, tokenizer, max_length) ->
    (encoded, problems)``; the held-out split with ``encode_held_out`` when given); every item that
    cannot be is listed in one ``DatasetError``."""
    from transformers import AutoTokenizer

    base = base_folder(cfg.base, root)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    encoded_train, problems = encode(train, tokenizer, cfg.max_length)
    encoded_eval, more = (encode_held_out or encode)(held_out, tokenizer, cfg.max_length) if held_out else ([], [])
    problems += more
    if problems:
        raise DatasetError(f"{data}: {len(problems)} example(s) cannot be trained on:\n  " + "\n  ".join(problems[:10]))
    return Prepared(base, tokenizer, encoded_train, encoded_eval, {"train": train, "eval": held_out}, sha256_file(data))


def base_folder(base: str, root: Path) -> Path:
    """The Hugging Face folder to train from: a bundled model or a local folder (``models.base``), or
    a model registered in this workspace (a fine-tuned generator: its adapter is merged into its
    base once, into ``.ragtune/base/NAME-HASH``)."""
    from ragtune.models.base import BASE_DIR, materialise_base
    from ragtune.models.registry import load_card, model_sha256, registered, resolve

    if not registered(root, base):
        return materialise_base(base, root)
    card = load_card(root, base)
    if card.task == "reward":
        raise ConfigError(f"--base {base!r} is a reward model; start from a generator (a bundled model, a folder, "
                          "or a registered sft/dpo/kto/rl model)")
    parts = resolve(root, base)
    if card.kind == "full" and parts.tokenizer == parts.base:
        return parts.base
    dest = Path(root) / STATE_DIR / BASE_DIR / f"{base}-{model_sha256(root, base)[:16]}"
    if (dest / "config.json").is_file():
        return dest
    if card.kind == "full":  # its weights (linked, not copied) and its tokenizer in one folder, as a base must be
        staging = dest.with_name(f".{dest.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for folder, link in ((parts.base, True), (parts.tokenizer, False)):
            for f in folder.iterdir():
                if f.is_file() and not (staging / f.name).exists():
                    _link_or_copy(f, staging / f.name) if link else shutil.copy2(f, staging / f.name)
        os.replace(staging, dest)
        return dest
    from ragtune.train.merge import merge

    merge(root, base, dest, overwrite=True)
    return dest


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another file system
        shutil.copy2(source, dest)


# -- one driver for every kind of fine-tuning ------------------------------------------------------
class Recipe:
    """What one kind of fine-tuning puts into ``train_and_register``; the SFT recipe is this class."""

    task = "sft"  # the registry's task
    unit = "examples"  # what the training data counts, for the log

    def __init__(self, prompt_field: str | None = None, completion_field: str | None = None, system: str | None = None) -> None:
        self.fields = (prompt_field, completion_field, system)

    def settings(self) -> dict[str, Any]:
        """Settings beyond [train] that shape the result (recorded on the card and tracked): section -> values."""
        return {}

    def prepare(self, root: Path, data: Path, cfg) -> Prepared:
        return prepare(root, data, cfg, *self.fields)

    def build(self, prepared: Prepared, cfg):
        from ragtune.train.sft import build_model

        return build_model(prepared.base, cfg, cfg.seed)

    def ready(self, model, prepared: Prepared, cfg, work: Path, resumed: bool, log) -> None:
        """Anything computed once before the first step (DPO/KTO: the reference log-probs)."""
        from ragtune.train.probe import answer_items

        self.pad = _pad_id(prepared.tokenizer)
        self.items = answer_items(prepared.examples["eval"], cfg.check_answers)  # held-out prompts with a '#### N' answer

    def objective(self, prepared: Prepared, cfg):
        from ragtune.train.sft import CompletionLoss

        return CompletionLoss(self.pad)

    def eval_set(self, prepared: Prepared) -> list | None:
        return prepared.eval

    def train(self, model, prepared: Prepared, cfg, start, on_step, on_checkpoint, log):
        from ragtune.train.sft import train_loop

        return train_loop(model, prepared.train, cfg, self.objective(prepared, cfg), eval_set=self.eval_set(prepared),
                          on_step=on_step, start=start, on_checkpoint=on_checkpoint)

    def measure(self, model, prepared: Prepared, cfg, which: str, log, before: dict | None = None) -> dict[str, Any]:
        """Figures of the model before ("base") and after ("tuned", with ``before``: the base's) training, on the same inputs."""
        from ragtune.train.probe import run_checks
        from ragtune.train.sft import CompletionLoss, evaluate_loss

        out = {"eval_loss": evaluate_loss(model, prepared.eval, cfg.batch_size, CompletionLoss(self.pad))} if which == "base" else {}
        return {**out, **run_checks(model, prepared.tokenizer, self.items, cfg, which, log)}

    def metrics(self, before: dict, after: dict, stats, cfg) -> dict[str, Any]:
        from ragtune.train.probe import forgetting

        return {"eval_loss_before": before.get("eval_loss"), "eval_loss_after": stats.eval_loss[-1] if stats.eval_loss else None,
                **forgetting(before, after, cfg.forgetting_threshold)}

    def checks(self, before: dict, after: dict) -> dict[str, Any] | None:
        """checks.json of the registered model (None: none)."""
        from ragtune.train.probe import checks_record

        return checks_record(self.items, before, after)

    def save(self, model, stage: Path, cfg) -> None:
        model.save_pretrained(str(stage / ("adapter" if cfg.method == "lora" else "model")))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class RewardRecipe(Recipe):
    """A reward model: a scalar head on the base; held-out pairs ordered before and after."""

    task = "reward"

    def prepare(self, root, data, cfg):
        return prepare_preferences(root, data, cfg, "reward")

    def build(self, prepared, cfg):
        from ragtune.train.reward import build_reward_model

        return build_reward_model(prepared.base, cfg, cfg.seed)

    def ready(self, model, prepared, cfg, work, resumed, log):
        from ragtune.train.reward import EncodedPair

        self.pad = _pad_id(prepared.tokenizer)  # rewards are read by mask, not by pad id
        self.pairs = isinstance(prepared.train[0], EncodedPair)
        self.unit = "pairs" if self.pairs else "liked/disliked answers"
        self.held_pairs = [e for e in prepared.eval if isinstance(e, EncodedPair)]

    def objective(self, prepared, cfg):
        from ragtune.train.reward import PairLoss, ThumbLoss

        return PairLoss(self.pad) if self.pairs else ThumbLoss(self.pad)

    def measure(self, model, prepared, cfg, which, log, before=None):  # the untrained head: about chance
        from ragtune.train.reward import evaluate_pairs

        return evaluate_pairs(model, self.held_pairs, self.pad, cfg.batch_size, cfg.seed).metrics() if self.held_pairs else {}

    def metrics(self, before, after, stats, cfg):
        return {"eval_loss_after": stats.eval_loss[-1] if stats.eval_loss else None,
                "accuracy_before": before.get("accuracy"), "accuracy_after": after.get("accuracy"),
                "accuracy_change": after["accuracy"] - before["accuracy"] if "accuracy" in after and "accuracy" in before else None,
                **{f"held_out_{k}" if k == "pairs" else k: v for k, v in after.items() if k != "accuracy"}}

    def checks(self, before, after):
        return None

    def save(self, model, stage, cfg):
        from ragtune.train.reward import save_reward_model

        save_reward_model(model, stage, cfg.method)


class PolicyRecipe(Recipe):
    """What the generator-tuning recipes from preferences share (dpo, kto, rl): the ``rl.PolicyCheck``
    on held-out prompts (answers, score under ``reward``, win rate under ``judge``, KL, length) and
    the forgetting checks, before and after."""

    def __init__(self, root: Path, rcfg, reward: str | None = None, judge: str | None = None) -> None:
        from ragtune.models.registry import load_card, model_sha256

        self.root, self.rcfg, self.reward, self.judge = Path(root), rcfg, reward, judge
        self.lineage = {}
        for role, name in (("reward", reward), ("judge", judge)):
            if name:
                if load_card(self.root, name).task != "reward":
                    raise ConfigError(f"--{role} {name!r} is not a reward model; train one with `ragtune finetune reward`")
                self.lineage[role] = {"name": name, "sha256": model_sha256(self.root, name)}
        if reward and judge and reward == judge:
            raise ConfigError(f"--judge {judge!r} is the reward model the policy is trained against: its scores prove "
                              "nothing; train a second reward model on a disjoint split and judge with it")

    def settings(self):
        return {"rl": dataclasses.asdict(self.rcfg), **self.lineage}

    def held_out_prompts(self, prepared: Prepared) -> list:
        prompts = {repr(item.prompt): item.prompt for item in prepared.examples["eval"]}  # rankings and thumbs repeat them
        return list(prompts.values())

    def ready(self, model, prepared, cfg, work, resumed, log):
        from ragtune.train.rl import PolicyCheck, RewardModelScorer

        self.pad, self.items = _pad_id(prepared.tokenizer), []
        scorers = {role: RewardModelScorer.registered(self.root, info["name"], cfg.batch_size) for role, info in self.lineage.items()}
        self.scorer = scorers.get("reward")
        self.check = PolicyCheck(self.held_out_prompts(prepared), self.rcfg, cfg.seed, self.scorer, scorers.get("judge"))

    def measure(self, model, prepared, cfg, which, log, before=None):
        from ragtune.train.probe import run_checks

        log(f"checking the {which} model on {len(self.check.prompts)} held-out prompts"
            + (f" (scored by {self.reward})" if self.reward else "") + (f", judged by {self.judge}" if self.judge else ""))
        reference = None if which == "base" or hasattr(model, "disable_adapter") else _base_model(prepared.base)
        out = self.check.measure(model, prepared.tokenizer, which, before, reference)
        return {**out, **run_checks(model, prepared.tokenizer, [], cfg, which, log)}

    def metrics(self, before, after, stats, cfg):
        from ragtune.train.probe import forgetting
        from ragtune.train.rl import PolicyCheck

        return {**PolicyCheck.metrics(before, after), **forgetting(before, after, cfg.forgetting_threshold)}

    def checks(self, before, after):
        from ragtune.train.probe import checks_record

        return {**checks_record([], before, after), "held_out": self.check.record(before, after)}


def _base_model(base: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()


class DirectRecipe(PolicyRecipe):
    """DPO (pairs) or KTO (likes/dislikes): the reference's log-probs cached before the first step;
    held-out implicit-reward accuracy after; the policy and forgetting checks before and after."""

    REFERENCE = "reference.json"

    def __init__(self, loss: str, pcfg, root: Path, rcfg, reward: str | None = None, judge: str | None = None) -> None:
        super().__init__(root, rcfg, reward, judge)
        self.task, self.pcfg = loss, pcfg
        self.unit = "pairs" if loss == "dpo" else "liked/disliked answers"

    def settings(self):
        return {"preference": dataclasses.asdict(self.pcfg), **super().settings()}

    def prepare(self, root, data, cfg):
        return prepare_preferences(root, data, cfg, self.task)

    def ready(self, model, prepared, cfg, work, resumed, log):
        """The reference log-probs of every train and held-out row: computed now (the model has not
        moved yet) and kept in the work folder, or read back from it when resuming."""
        from ragtune.train.direct import reference_logprobs, set_reference

        super().ready(model, prepared, cfg, work, resumed, log)
        path = work / self.REFERENCE
        everything = prepared.train + prepared.eval
        if path.is_file():
            values = json.loads(path.read_text())
        elif resumed:
            raise ConfigError(f"--resume: {path} is missing, and the model has moved since its reference log-probs were "
                              "computed; use --restart")
        else:
            log(f"reference log-probs of {len(everything)} rows (once, cached in {path.name})")
            values = reference_logprobs(model, everything, self.pad, cfg.batch_size)
            if World().rank == 0:
                write_json(path, values)
        set_reference(everything, values)

    def objective(self, prepared, cfg):
        from ragtune.train.direct import DpoLoss, KtoLoss

        if self.task == "dpo":
            return DpoLoss(self.pad, self.pcfg.beta, self.pcfg.label_smoothing)
        return KtoLoss(self.pad, self.pcfg.beta, self.pcfg.desirable_weight, self.pcfg.undesirable_weight)

    def eval_set(self, prepared):
        same = prepared.eval and type(prepared.eval[0]) is type(prepared.train[0])
        return prepared.eval if same else None  # KTO measured on held-out pairs has no eval loss

    def measure(self, model, prepared, cfg, which, log, before=None):
        from ragtune.train.direct import evaluate_direct

        held = evaluate_direct(model, prepared.eval, self.pad, self.pcfg.beta, cfg.batch_size, cfg.seed) if which == "tuned" else {}
        return {**held, **super().measure(model, prepared, cfg, which, log, before)}

    def metrics(self, before, after, stats, cfg):
        held = {k: v for k, v in after.items() if k.startswith(("held_out_", "reward_accuracy", "reward_margin", "reference_",
                                                                   "reward_sign", "reward_liked", "reward_disliked"))}
        return {"eval_loss_after": stats.eval_loss[-1] if stats.eval_loss else None, **held,
                **super().metrics(before, after, stats, cfg)}


class RlRecipe(PolicyRecipe):
    """RLOO or GRPO against a registered reward model (or any ``rl.Scorer``) on a prompt file."""

    task, unit = "rl", "prompts"

    def __init__(self, root: Path, rcfg, reward: str | None, judge: str | None = None, scorer=None,
                 held_out: Path | None = None) -> None:
        from ragtune.train.rl import check

        check(rcfg)
        self.held_out = held_out
        if reward is None and scorer is None:
            raise ConfigError("finetune rl needs a reward: --reward NAME (a registered reward model)")
        super().__init__(root, rcfg, reward, judge)
        self.custom = scorer

    def prepare(self, root, data, cfg):
        from transformers import AutoTokenizer

        from ragtune.train.rl import encode_prompt, load_prompts, split_prompts

        if cfg.max_length <= self.rcfg.max_new_tokens:
            raise ConfigError(f"[train] max_length {cfg.max_length} leaves no room for prompts with [rl] max_new_tokens "
                              f"{self.rcfg.max_new_tokens}; raise --max-length")
        if self.held_out is not None:  # the prompts to check on, given: every other prompt trains
            held = load_prompts(self.held_out)
            train = [p for p in load_prompts(data) if p not in held]
        else:
            train, held = split_prompts(load_prompts(data), cfg.eval_fraction, cfg.seed)
        if not train:
            raise DatasetError(f"{data}: every prompt went to the held-out split; lower --eval-fraction")
        base = base_folder(cfg.base, root)
        tok = AutoTokenizer.from_pretrained(str(base))
        problems, encoded = [], {}
        for part, prompts in (("train", train), ("eval", held)):
            encoded[part] = []
            for prompt in prompts:
                try:
                    encoded[part].append(encode_prompt(tok, prompt, cfg.max_length - self.rcfg.max_new_tokens))
                except DatasetError as e:
                    problems.append(str(e))
        if problems:
            raise DatasetError(f"{data}: {len(problems)} prompt(s) cannot be trained on:\n  " + "\n  ".join(problems[:10]))
        return Prepared(base, tok, encoded["train"], encoded["eval"], {"train": train, "eval": held}, sha256_file(data))

    def settings(self):
        return {**super().settings(), **({"held_out_sha256": sha256_file(self.held_out)} if self.held_out else {})}

    def held_out_prompts(self, prepared):
        return prepared.examples["eval"]

    def ready(self, model, prepared, cfg, work, resumed, log):
        super().ready(model, prepared, cfg, work, resumed, log)
        if self.custom is not None:
            self.scorer = self.check.scorer = self.custom

    def train(self, model, prepared, cfg, start, on_step, on_checkpoint, log):
        from ragtune.train.rl import train_rl

        return train_rl(model, prepared.tokenizer, prepared.examples["train"], prepared.train, self.scorer, cfg, self.rcfg,
                        start, on_step, on_checkpoint, log)

    def metrics(self, before, after, stats, cfg):
        history = stats.history
        first, last = history[: max(1, len(history) // 5)], history[-max(1, len(history) // 5):]
        mean = lambda rows, k: sum(r[k] for r in rows) / len(rows) if rows else None  # noqa: E731
        return {"train_reward_first": mean(first, "reward"), "train_reward_last": mean(last, "reward"),
                "train_kl_last": mean(last, "kl"), "train_length_last": mean(last, "length"),
                "train_truncated_last": mean(last, "truncated"), "stopped_by_kl": stats.steps < self.rcfg.steps,
                **super().metrics(before, after, stats, cfg)}


def train_and_register(root: Path, name: str, data: Path, cfg, recipe: Recipe, resume: bool = False, restart: bool = False,
                       overwrite: bool = False, on_step=None, log=print, track: Track | None = None) -> Path:
    """Train ``name`` on ``data`` with ``cfg`` (a ``TrainConfig``) as ``recipe`` says, and register it
    in the workspace folder ``root``; returns the model's folder. ``track`` gets the finished run
    (rank 0 only). Bad data stops the run before anything is written."""
    import torch

    from ragtune.models.registry import check_name, models_dir, registered
    from ragtune.train import checkpoint
    from ragtune.train.sft import stats_json

    check_name(name)
    world, root = World(), Path(root)
    if registered(root, name) and not overwrite:
        raise ModelError(f"a model named {name!r} is already registered; pick another --name, "
                         f"`ragtune models rm {name}`, or --overwrite")
    prepared = recipe.prepare(root, data, cfg)
    work = root / STATE_DIR / WORK_DIR / name
    run = _start(work, name, data, cfg, recipe.settings(), resume, restart)
    if threads := cfg.threads or env_threads():
        torch.set_num_threads(threads)
    model = recipe.build(prepared, cfg)
    start = None
    if resume and (found := checkpoint.latest(work / "checkpoint")):
        start = checkpoint.load(found, model)
        log(f"resuming {name} from epoch {start['epoch']}, batch {start['batch']} (step {start['stats'].steps})")
    recipe.ready(model, prepared, cfg, work, start is not None, log)
    if "before" not in run:  # the model as it starts (a fresh LoRA adapter changes nothing yet); rank 0 measures
        run["before"] = {} if start is not None or world.rank != 0 else recipe.measure(model, prepared, cfg, "base", log)
        if world.rank == 0:
            write_json(work / "run.json", run)
    log(f"training {name} ({recipe.task}): {len(prepared.train)} {recipe.unit} ({len(prepared.eval)} held out), "
        f"{cfg.method}, base {prepared.base}")
    started = time.perf_counter()
    stats = recipe.train(model, prepared, cfg, start, on_step, lambda state: checkpoint.save(work / "checkpoint", model, state), log)
    if world.rank != 0:  # under torchrun: rank 0 registers and tracks
        return models_dir(root) / name
    before = run["before"]
    after = recipe.measure(model, prepared, cfg, "tuned", log, before)
    metrics = {"train_loss_last": stats.history[-1]["loss"] if stats.history else None,
               **recipe.metrics(before, after, stats, cfg),
               "tokens_per_s": stats.tokens_per_s, "padding_share": 1 - stats.tokens / max(stats.padded_tokens, 1),
               "steps": stats.steps, "examples_seen": stats.examples, "trained_tokens": stats.trained_tokens,
               "processes": world.size}
    folder = _register(root, name, model, cfg, recipe, prepared, metrics, stats, overwrite, recipe.checks(before, after))
    if track is not None:
        track(name, {"train": dataclasses.asdict(cfg), **recipe.settings()}, metrics, stats_json(stats), folder)
    shutil.rmtree(work, ignore_errors=True)
    log(f"registered {name} in {folder} ({time.perf_counter() - started:.0f}s)")
    return folder


def training_state(root: Path, name: str, log=None) -> bool | None:
    """How a job that trains ``name`` goes on: None = already registered (an earlier run got that far;
    keep it), True = a started training to resume, False = start one."""
    from ragtune.models.registry import registered

    if registered(root, name):
        if log:
            log(f"{name}: registered in an earlier run, kept")
        return None
    return (Path(root) / STATE_DIR / WORK_DIR / name / "run.json").is_file()


def finetune(root: Path, name: str, data: Path, cfg, resume: bool = False, restart: bool = False, overwrite: bool = False,
             prompt_field: str | None = None, completion_field: str | None = None, system: str | None = None,
             on_step=None, log=print, track: Track | None = None) -> Path:
    """Supervised fine-tuning of ``name`` on demonstrations ``data``; the forgetting checks before and after."""
    return train_and_register(root, name, data, cfg, Recipe(prompt_field, completion_field, system), resume, restart,
                              overwrite, on_step, log, track)


def finetune_reward(root: Path, name: str, data: Path, cfg, resume: bool = False, restart: bool = False,
                    overwrite: bool = False, on_step=None, log=print, track: Track | None = None) -> Path:
    """A reward model ``name`` from preference ``data`` (pairs, rankings or likes/dislikes), registered
    with task "reward"; held-out pairs are scored before and after training."""
    return train_and_register(root, name, data, cfg, RewardRecipe(), resume, restart, overwrite, on_step, log, track)


def finetune_direct(root: Path, name: str, data: Path, cfg, pcfg, loss: str = "dpo", rcfg=None, reward: str | None = None,
                    judge: str | None = None, resume: bool = False, restart: bool = False, overwrite: bool = False,
                    on_step=None, log=print, track: Track | None = None) -> Path:
    """DPO (``loss="dpo"``, pairs or rankings) or KTO (``"kto"``: likes/dislikes, or pairs split into
    one of each) of the generator ``name`` with ``pcfg`` (a ``PreferenceConfig``). The held-out
    prompts are answered before and after (``rcfg``: an ``RLConfig``'s sampling and eval_prompts),
    scored by the reward model ``reward`` and judged by ``judge`` when given."""
    from ragtune.config import RLConfig
    from ragtune.train.direct import LOSSES

    if loss not in LOSSES:
        raise ConfigError(f"unknown preference loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    recipe = DirectRecipe(loss, pcfg, root, rcfg or RLConfig(), reward, judge)
    return train_and_register(root, name, data, cfg, recipe, resume, restart, overwrite, on_step, log, track)


def finetune_rl(root: Path, name: str, prompts: Path, cfg, rcfg, reward: str | None, judge: str | None = None, scorer=None,
                held_out: Path | None = None, resume: bool = False, restart: bool = False, overwrite: bool = False,
                on_step=None, log=print, track: Track | None = None) -> Path:
    """RLOO or GRPO (``rcfg``: an ``RLConfig``) of the generator ``name`` on ``prompts`` against the
    registered reward model ``reward`` (or ``scorer``, any ``rl.Scorer``); registered as a generator.
    The checks after training use the prompts of ``held_out`` when given (none of them trains), else
    a ``[train] eval_fraction`` split of ``prompts``."""
    recipe = RlRecipe(root, rcfg, reward, judge, scorer, held_out)
    return train_and_register(root, name, prompts, cfg, recipe, resume, restart, overwrite, on_step, log, track)


def _start(work: Path, name: str, data: Path, cfg, settings: dict, resume: bool, restart: bool) -> dict[str, Any]:
    """The work folder's run.json: new, or the interrupted one when resuming (same data and settings)."""
    wanted = {"name": name, "data": str(Path(data).resolve()), "data_sha256": sha256_file(data),
              "config": {**dataclasses.asdict(cfg), **settings}}
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


def _register(root: Path, name: str, model, cfg, recipe: Recipe, prepared: Prepared, metrics: dict, stats,
              overwrite: bool, checks: dict[str, Any] | None) -> Path:
    from ragtune.models.base import base_identity
    from ragtune.models.registry import ModelCard, register, staging

    stage = staging(root, name)
    recipe.save(model, stage, cfg)
    prepared.tokenizer.save_pretrained(str(stage / "tokenizer"))
    if checks is not None:
        write_json(stage / "checks.json", checks)
    card = ModelCard(name=name, kind=cfg.method, base=base_identity(prepared.base), data_sha256=prepared.data_sha256,
                     config={**dataclasses.asdict(cfg), **recipe.settings()}, metrics=metrics, train_time_s=stats.seconds,
                     task=recipe.task)
    return register(root, name, stage, card, overwrite=overwrite)
