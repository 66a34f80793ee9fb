"""``ragtune models merge``: a registered LoRA model's adapter folded into its base (PEFT
``merge_and_unload``), saved as a plain Hugging Face folder for other tools or faster serving.
Any task: a generator (sft, dpo, kto, rl) becomes a causal LM folder; a reward model's folder also
gets its scalar head (``score.safetensors``, read at the last token as ``train.reward`` does)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ragtune.errors import ModelError
from ragtune.files import staged, write_json
from ragtune.files import utc_now as now
from ragtune.models.registry import FORMAT_VERSION, Resolved, load_card, resolve


def merge(ws_root: Path, name: str, out: Path | None = None, overwrite: bool = False) -> Path:
    """Fold a LoRA model's adapter into its base (PEFT ``merge_and_unload``) and save a plain
    Hugging Face folder, with the tokenizer: ``models/NAME/merged/`` or ``out``. Written
    atomically; an existing folder is refused unless ``overwrite``."""
    card, (base, adapter, folder) = load_card(ws_root, name), resolve(ws_root, name)
    if card.kind != "lora":
        raise ModelError(f"{name!r} is a full fine-tune: {folder / 'model'} is already a complete model; nothing to merge")
    dest = Path(out) if out is not None else folder / "merged"
    if dest.exists() and not overwrite:
        raise ModelError(f"{dest} already exists; remove it, or merge with overwrite")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(str(Resolved(base, adapter, folder).tokenizer))
    with staged(dest, replace=overwrite) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if card.task == "reward":
            from ragtune.train.reward import HEAD_FILE

            shutil.copy2(folder / HEAD_FILE, tmp / HEAD_FILE)
        write_json(tmp / "ragtune-merged.json", {"format_version": FORMAT_VERSION, "model": name, "task": card.task, "base": card.base,
                                                  "adapter_created": card.created, "created": now()})
    return dest
