"""Resumable training checkpoints, without pickle: the trainable weights and the optimiser's
tensors in safetensors, everything else (position in the data, step, statistics, optimiser
scalars) in JSON. Written to a temporary folder and swapped in, so a kill at any moment leaves
the previous checkpoint or the new one, never a mix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ragtune.train.sft import stats_from_json, stats_json

FORMAT_VERSION = 1


def save(folder: Path, model, state: dict[str, Any]) -> None:
    """``state``: epoch, batch (the next batch to run), optimizer, stats (from ``train_loop``)."""
    from safetensors.torch import save_file

    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp / "trainable.safetensors"))
    opt = state["optimizer"].state_dict()
    tensors, scalars = {}, {}
    for pid, slots in opt["state"].items():
        for key, value in slots.items():
            if hasattr(value, "shape") and value.dim() > 0:
                tensors[f"{pid}.{key}"] = value.contiguous()
            else:
                scalars[f"{pid}.{key}"] = float(value)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"format_version": FORMAT_VERSION, "epoch": state["epoch"], "batch": state["batch"],
            "param_groups": opt["param_groups"], "optimizer_scalars": scalars, "stats": stats_json(state["stats"])}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def latest(folder: Path) -> Path | None:
    """The checkpoint to resume from: the folder, or the previous one if a swap was interrupted."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "state.json").exists():
            return candidate
    return None


def load(folder: Path, model) -> dict[str, Any]:
    """Put the trainable weights back into ``model``; return the ``start`` for ``train_loop``."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, slot = key.split(".", 1)
        state.setdefault(int(pid), {})[slot] = value
    for key, value in meta["optimizer_scalars"].items():
        pid, slot = key.split(".", 1)
        state.setdefault(int(pid), {})[slot] = torch.tensor(value)
    optimizer = {"state": state, "param_groups": meta["param_groups"]}
    return {"epoch": meta["epoch"], "batch": meta["batch"], "optimizer": optimizer, "stats": stats_from_json(meta["stats"])}
