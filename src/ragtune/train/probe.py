"""The forgetting probe: does fine-tuning hurt what the model knew before?

A general-text sample shipped with ragtune (``probe/general.txt``: short everyday and
encyclopedic paragraphs, written for this purpose) is scored before and after training as
perplexity (exp of the mean next-token loss over the whole text, no chat template). Its rise is
reported with the held-out loss change, and flagged past ``[train] forgetting_threshold``.
"""

from __future__ import annotations

import math
from pathlib import Path

PROBE = Path(__file__).parent / "probe" / "general.txt"


def probe_texts() -> list[str]:
    return [p.strip() for p in PROBE.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def perplexity(model, tokenizer, texts: list[str]) -> float:
    """exp(mean next-token loss) over every token of ``texts`` (each scored on its own)."""
    import torch

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total, count = total + float(out.loss) * n, count + n
    model.train(was_training)
    return math.exp(total / max(count, 1))


def forgetting(before: dict[str, float | None], after: dict[str, float | None], threshold: float) -> dict[str, object]:
    """Relative changes of the probe perplexity and held-out loss; ``flagged`` when the probe's
    perplexity rose by more than ``threshold`` (0.1 = 10%)."""
    change = after["probe_ppl"] / before["probe_ppl"] - 1 if before.get("probe_ppl") else None
    return {"probe_ppl_before": before.get("probe_ppl"), "probe_ppl_after": after.get("probe_ppl"), "probe_ppl_change": change,
            "forgetting_flagged": bool(change is not None and change > threshold)}
