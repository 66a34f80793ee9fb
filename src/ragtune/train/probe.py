"""Before/after checks of a fine-tuned model: did it learn the task, did it forget the rest?

- **General text** (``probe/general.txt``: short everyday and encyclopedic paragraphs written for
  this purpose): perplexity, exp of the mean next-token loss over the whole text, no template.
- **General prompts** (``probe/prompts.jsonl``: everyday questions with the words a right answer
  contains): the share of greedy answers that contain one of them (whole words, any case).
- **Final answers** of held-out demonstrations whose answer ends GSM8K-style in ``#### 42``: the
  share of generated answers that end in that format, and the share whose number is right
  (greedy, no 10-token run repeated verbatim: a small model otherwise often loops to the limit).

Perplexity rising by more than ``[train] forgetting_threshold`` (relative) or the general-prompt
score falling by more than it (absolute) flags the model.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ragtune.files import read_jsonl

PROBE = Path(__file__).parent / "probe" / "general.txt"
PROMPTS = Path(__file__).parent / "probe" / "prompts.jsonl"
FINAL_ANSWER = re.compile(r"####\s*\$?(-?[\d,]*\.?\d+)\s*$")
NO_REPEAT_NGRAM = 10  # greedy answers may not repeat a 10-token run verbatim: small models otherwise loop to the limit


def probe_texts() -> list[str]:
    return [p.strip() for p in PROBE.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def probe_prompts() -> list[dict]:
    return [row for _, row in read_jsonl(PROMPTS, strict=True)]


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


def final_answer(text: str) -> str | None:
    """The number after a closing ``#### `` (commas and a ``$`` dropped, ``7.0`` read as ``7``), or None."""
    found = FINAL_ANSWER.search(text.strip())
    if not found:
        return None
    number = found.group(1).replace(",", "")
    try:
        value = float(number)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def answer_items(examples, limit: int) -> list[tuple[list[dict], str]]:
    """(prompt turns, expected final answer) of up to ``limit`` examples whose last answer has one."""
    items = []
    for ex in examples:
        gold = final_answer(ex.messages[-1]["content"])
        if gold is not None:
            items.append((ex.messages[:-1], gold))
    return items[:limit]


def check_answers(model, tokenizer, items: list[tuple[list[dict], str]], max_tokens: int,
                  no_repeat_ngram: int = NO_REPEAT_NGRAM) -> dict:
    """Generate for each held-out prompt; the share ending in ``#### N`` and the share with the right N."""
    from ragtune.generate.transformers import generate_batch

    answers = generate_batch(model, tokenizer, [prompt for prompt, _ in items], max_tokens, no_repeat_ngram=no_repeat_ngram)
    got = [final_answer(a) for a in answers]
    n = max(len(items), 1)
    return {"final_answer_format": sum(g is not None for g in got) / n,
            "final_answer_em": sum(g == gold for g, (_, gold) in zip(got, items)) / n,
            "answers": answers}


def check_prompts(model, tokenizer, max_tokens: int = 48) -> dict:
    """Answer the shipped general prompts; the share whose answer contains an expected word."""
    from ragtune.generate.transformers import generate_batch

    prompts = probe_prompts()
    answers = generate_batch(model, tokenizer, [[{"role": "user", "content": p["prompt"]}] for p in prompts], max_tokens)
    right = [_contains_any(a, p["expect"]) for a, p in zip(answers, prompts)]
    return {"general_score": sum(right) / len(prompts), "answers": answers}


def _contains_any(text: str, words: list[str]) -> bool:
    return any(re.search(r"(?<!\w)" + re.escape(w.lower()) + r"(?!\w)", text.lower()) for w in words)


def forgetting(before: dict[str, float | None], after: dict[str, float | None], threshold: float) -> dict[str, object]:
    """Before/after values and changes; ``forgetting_flagged`` when the probe's perplexity rose by
    more than ``threshold`` (0.1 = 10%) or the general-prompt score fell by more than ``threshold``."""
    out: dict[str, object] = {}
    for key in ("probe_ppl", "general_score", "final_answer_format", "final_answer_em"):
        b, a = before.get(key), after.get(key)
        if b is None or a is None:
            continue
        out[f"{key}_before"], out[f"{key}_after"] = b, a
        if key == "probe_ppl":  # relative; the shares change in points
            out[f"{key}_change"] = a / b - 1 if b else None
        else:
            out[f"{key}_change"] = a - b
    ppl, score = out.get("probe_ppl_change"), out.get("general_score_change")
    out["forgetting_flagged"] = bool((ppl is not None and ppl > threshold) or (score is not None and score < -threshold))
    return out


def run_checks(model, tokenizer, items: list, cfg, which: str, log) -> dict[str, Any]:
    """Every check of this module on ``model`` (``which``: "base" or "tuned", for the log); answers kept for the record."""
    log(f"checking the {which} model: general-text perplexity" + (", general prompts" if cfg.check_prompts else "")
        + (f", {len(items)} held-out final answers" if items else ""))
    out: dict[str, Any] = {"probe_ppl": perplexity(model, tokenizer, probe_texts())}
    if cfg.check_prompts:
        general = check_prompts(model, tokenizer)
        out.update(general_score=general["general_score"], general_answers=general["answers"])
    if items:
        held = check_answers(model, tokenizer, items, cfg.check_max_tokens)
        out.update(final_answer_format=held["final_answer_format"], final_answer_em=held["final_answer_em"],
                   held_out_answers=held["answers"])
    return out


def checks_record(items: list, before: dict, after: dict) -> dict[str, Any]:
    """checks.json of the registered model: every checked prompt with the base's and the tuned model's answer."""
    general = [{"prompt": p["prompt"], "expect": p["expect"], "base": b, "tuned": a}
               for p, b, a in zip(probe_prompts(), before.get("general_answers", []), after.get("general_answers", []))]
    held = [{"expected": gold, "prompt": turns[-1]["content"], "base": b, "tuned": a}
            for (turns, gold), b, a in zip(items, before.get("held_out_answers", []), after.get("held_out_answers", []))]
    return {"general_prompts": general, "held_out": held}
