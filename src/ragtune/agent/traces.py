"""Agent traces as training data: the questions an agent answered well, as SFT demonstrations in TRL's
``messages`` format with ``tool_calls`` — the "fine-tune the agent" step of the cycle. ``train.data``
renders them back exactly as the agent prompts the model, so a small model learns the calls it will
be asked to make.

A trace is kept when the agent chose to answer (not stopped by the budget or a repeated call), every reply was a valid
action, no tool failed, and the answer scored at least ``min_f1`` against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragtune.types import Example


@dataclass
class TraceExport:
    examples: list[Example]
    seen: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> questions


def successful_traces(predictions: list[dict[str, Any]], min_f1: float = 1.0) -> TraceExport:
    """Demonstrations (``train.data.write_examples`` writes them) from an agent run's predictions (``predictions.jsonl`` rows)."""
    out = TraceExport([])
    for p in predictions:
        if p.get("trace") is None:
            continue
        out.seen += 1
        reason = _why_not(p, min_f1)
        if reason:
            out.left_out[reason] = out.left_out.get(reason, 0) + 1
            continue
        messages = [{k: v for k, v in m.items() if k != "invalid"} for m in p["trace"]]
        out.examples.append(Example(str(p["id"]), messages, {"f1": p.get("f1"), "steps": len(p["steps"]), "source": "agent-trace"}))
    return out


def _why_not(p: dict[str, Any], min_f1: float) -> str | None:
    if p.get("stopped") == "repeat":
        return "a repeated call"
    if p.get("stopped") != "answer":
        return "stopped by the step budget"
    if any(s.get("error") == "parse" for s in p["steps"]):
        return "an invalid reply"
    if any(s.get("error") == "tool" for s in p["steps"]):
        return "a tool error"
    if (p.get("f1") or 0.0) < min_f1:
        return f"F1 below {min_f1:g}"
    return None
