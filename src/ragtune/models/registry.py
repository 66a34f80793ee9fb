"""Fine-tuned models, registered by name in ``<workspace>/.ragtune/models/NAME/``::

    adapter/     a PEFT LoRA adapter (safetensors)             kind "lora"
    model/       the whole fine-tuned model (HF folder)        kind "full"
    tokenizer/   the tokenizer files, chat template included
    score.safetensors   a reward model's scalar head (task "reward")
    card.json    what made it: task (sft, reward, ...), base model (name, path, sha256), data
                 sha256, the training config, metrics, training time, package versions, creation time
    merged/      after ``train.merge``: the adapter folded into the base, a plain HF folder

A trainer writes everything into a staging folder (``staging``) and calls ``register``, which
writes card.json last and renames the folder into place in one ``os.replace``: a killed run
never leaves a half model under a name. A folder without card.json is ignored by
``list_models`` and reported by ``load_card`` as incomplete.

``[generate] model = NAME`` serves a registered model (see ``ragtune.generate.get_generator``);
``ragtune.train.merge`` folds an adapter into its base. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ragtune.config import STATE_DIR
from ragtune.errors import ModelError
from ragtune.files import move_into_place, new_staging, package_version, staged, weights_sha256, write_json
from ragtune.files import utc_now as now
from ragtune.models.base import base_identity, materialise_base
from ragtune.models.bundled import MODELS

MODELS_DIR = "models"  # under the workspace's .ragtune/
CARD = "card.json"
FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("lora", "full")  # how the weights are stored
TASKS: tuple[str, ...] = ("sft", "reward", "dpo", "kto", "rl")  # what the model was trained to do (a reward model scores, it does not generate)
WEIGHTS_DIR = {"lora": "adapter", "full": "model"}
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PACKAGES = ("ragtune", "torch", "transformers", "peft", "safetensors", "tokenizers")


@dataclass
class ModelCard:
    """What a registered model is and what made it (``card.json``)."""

    name: str
    kind: Literal["lora", "full"]
    base: dict[str, str]  # name, path (relative to the workspace when inside it), sha256: see base_identity
    data_sha256: str = ""  # the training data
    config: dict[str, Any] = field(default_factory=dict)  # the full training config
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. train/eval loss, tokens per second
    train_time_s: float = 0.0
    packages: dict[str, str] = field(default_factory=dict)  # versions; filled in by register when empty
    created: str = ""  # ISO time; filled in by register when empty
    task: str = "sft"  # see TASKS; cards written before there were reward models are "sft"
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = CARD) -> "ModelCard":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted({"name", "kind", "base"} - set(data))
        problems = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
        if problems:
            raise ModelError(f"{origin}: {'; '.join(problems)} (a card has: {', '.join(sorted(known))})")
        if data["kind"] not in KINDS:
            raise ModelError(f"{origin}: kind = {data['kind']!r} is not valid; choose one of: {', '.join(KINDS)}")
        if data.get("task", "sft") not in TASKS:
            raise ModelError(f"{origin}: task = {data['task']!r} is not valid; choose one of: {', '.join(TASKS)}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ModelError(f"{origin}: format_version {data['format_version']} is newer than this ragtune reads "
                             f"({FORMAT_VERSION}); upgrade ragtune")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Resolved(NamedTuple):
    """Where a registered model's parts are, for loading it."""

    base: Path  # the HF folder whose weights load first: the base model (lora) or model/ (full)
    adapter: Path | None  # adapter/ for a LoRA model, None for a full one
    folder: Path  # models/NAME/: card.json and tokenizer/

    @property
    def tokenizer(self) -> Path:
        return self.folder / "tokenizer" if (self.folder / "tokenizer").is_dir() else self.base


def models_dir(ws_root: Path) -> Path:
    return Path(ws_root) / STATE_DIR / MODELS_DIR


def check_name(name: str) -> str:
    """``name`` if it can name a model: letters, digits, '-', '_', '.', starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ModelError(f"invalid model name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
                         "starting with a letter or digit (e.g. handbook-lora)")
    if name in MODELS:
        raise ModelError(f"{name!r} is the name of a bundled model; pick another name for a fine-tuned one")
    return name


def registered(ws_root: Path, name: str) -> Path | None:
    """The folder of ``name`` if it is registered (complete or not) in the workspace, else None.
    Cheap: for ``get_generator`` to tell a registered name from a file or registry name."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        return None
    folder = models_dir(ws_root) / name
    return folder if folder.is_dir() else None


def model_sha256(ws_root: Path, name: str) -> str:
    """What ``name`` generates with, as one hash: its weights' sha256, and for an adapter also the
    base's (the card's), so a run records exactly which model answered."""
    card = load_card(ws_root, name)
    folder = models_dir(ws_root) / name / WEIGHTS_DIR[card.kind]
    weights = next((folder / n for n in ("adapter_model.safetensors", "model.safetensors") if (folder / n).is_file()), None)
    if weights is None:
        raise ModelError(f"model {name!r} has no weights in {folder}; remove it with `ragtune models rm {name}`")
    own = weights_sha256(weights)
    return own if card.kind == "full" else hashlib.sha256(f"{card.base.get('sha256', '')}+{own}".encode()).hexdigest()


def staging(ws_root: Path, name: str) -> Path:
    """An empty folder to write a model into before ``register`` (on the same file system as the
    registry, so registering is a rename). Write ``adapter/`` or ``model/``, and ``tokenizer/``."""
    return new_staging(models_dir(ws_root) / check_name(name))


def register(ws_root: Path, name: str, staged_folder: Path, card: ModelCard | dict[str, Any],
             overwrite: bool = False) -> Path:
    """Move a fully written ``staged_folder`` into the registry as ``name``: card.json is written
    last into it, then the folder is renamed into place. Returns ``models/NAME/``."""
    ws_root, staged_folder = Path(ws_root), Path(staged_folder)
    card = card if isinstance(card, ModelCard) else ModelCard.from_dict({**card, "name": name}, origin="card")
    card = dataclasses.replace(card, name=check_name(name), format_version=FORMAT_VERSION,
                               base=_portable_base(ws_root, card.base), created=card.created or now(),
                               packages=card.packages or {p: v for p in PACKAGES if (v := package_version(p))})
    target = models_dir(ws_root) / name
    if target.exists() and not overwrite:
        raise ModelError(f"a model named {name!r} is already registered ({target}); choose another name, "
                         f"remove it with `ragtune models rm {name}`, or register with overwrite")
    _check_parts(staged_folder, card.kind)
    write_json(staged_folder / CARD, card.to_dict())
    try:
        move_into_place(staged_folder, target, replace=overwrite)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        with staged(target, replace=overwrite) as tmp:  # staged on another file system: copy, then rename
            shutil.copytree(staged_folder, tmp, dirs_exist_ok=True)
        shutil.rmtree(staged_folder)
    return target


def _check_parts(folder: Path, kind: str) -> None:
    weights = folder / WEIGHTS_DIR[kind]
    if not (weights.is_dir() and any(weights.glob("*.safetensors"))):
        raise ModelError(f"cannot register {folder}: a {kind} model needs {WEIGHTS_DIR[kind]}/ with safetensors weights")
    if not (folder / "tokenizer").is_dir():
        raise ModelError(f"cannot register {folder}: no tokenizer/ folder (save the tokenizer there)")


def _portable_base(ws_root: Path, base: dict[str, str]) -> dict[str, str]:
    """The base's path relative to the workspace when inside it, so a moved workspace still resolves."""
    missing = {"name", "path", "sha256"} - set(base)
    if missing:
        raise ModelError(f"card base lacks {sorted(missing)}: build it with ragtune.models.base.base_identity")
    path = Path(base["path"])
    if path.is_absolute() and path.resolve().is_relative_to(ws_root.resolve()):
        path = path.resolve().relative_to(ws_root.resolve())
    return {**base, "path": str(path)}


def list_models(ws_root: Path) -> list[ModelCard]:
    """The cards of every complete registered model, by name (incomplete folders are skipped)."""
    root = models_dir(ws_root)
    if not root.is_dir():
        return []
    return [load_card(ws_root, p.name) for p in sorted(root.iterdir())
            if p.is_dir() and NAME_RULE.fullmatch(p.name) and (p / CARD).is_file()]


def load_card(ws_root: Path, name: str) -> ModelCard:
    """The card of ``name``; a clear error if it is unknown or its folder is incomplete."""
    folder = _folder(ws_root, name)
    if not (folder / CARD).is_file():
        raise ModelError(f"model {name!r} is incomplete ({folder} has no {CARD}: its registration did not finish); "
                         f"remove it with `ragtune models rm {name}`")
    try:
        data = json.loads((folder / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder / CARD} cannot be read ({e}); remove the model with `ragtune models rm {name}`") from None
    return ModelCard.from_dict(data, origin=str(folder / CARD))


def _folder(ws_root: Path, name: str) -> Path:
    folder = models_dir(ws_root) / check_name(name)
    if not folder.is_dir():
        names = [c.name for c in list_models(ws_root)]
        raise ModelError(f"no registered model named {name!r}; registered: {', '.join(names) or 'none'} "
                         "(see `ragtune models list`)")
    return folder


def remove(ws_root: Path, name: str) -> Path:
    """Delete ``name`` (complete or not). The folder leaves its name in one rename first."""
    folder = _folder(ws_root, name)
    trash = new_staging(folder)
    os.replace(folder, trash / name)
    shutil.rmtree(trash)
    return folder


def resolve(ws_root: Path, name: str) -> Resolved:
    """Where ``name``'s weights are: (base folder, adapter folder or None, models/NAME/).
    A LoRA model's base is checked against the card's sha256; a converted base that was deleted
    (the bundled GGUF's) is converted again."""
    card = load_card(ws_root, name)
    folder = models_dir(ws_root) / name
    weights = folder / WEIGHTS_DIR[card.kind]
    if not weights.is_dir():
        raise ModelError(f"model {name!r} has no {WEIGHTS_DIR[card.kind]}/ folder; remove it with `ragtune models rm {name}`")
    if card.kind == "full":
        return Resolved(weights, None, folder)
    return Resolved(_base_folder(Path(ws_root), card), weights, folder)


def _base_folder(ws_root: Path, card: ModelCard) -> Path:
    path = Path(card.base["path"])
    path = path if path.is_absolute() else ws_root / path
    if not (path / "config.json").is_file():
        if card.base["name"] not in MODELS:
            raise ModelError(f"the base model of {card.name!r} is missing ({path}); restore it "
                             f"(sha256 {card.base['sha256'][:16]}...) or train the model again")
        path = materialise_base(card.base["name"], ws_root)
    found = base_identity(path)["sha256"]
    if found != card.base["sha256"]:
        raise ModelError(f"the base model of {card.name!r} at {path} has changed (sha256 {found[:16]}..., the card says "
                         f"{card.base['sha256'][:16]}...); the adapter was trained on another model: train it again")
    return path
