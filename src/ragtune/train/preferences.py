"""Preference data: pairs, rankings and likes/dislikes, in TRL's formats, validated by row.

JSONL (or ``.jsonl.gz``), one object per line; each field is a string or a list of
``{"role", "content"}`` messages (conversational), as TRL reads them:

* **pairs, explicit prompt**: ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
* **pairs, implicit prompt**: ``{"chosen": ..., "rejected": ...}`` (how Anthropic HH-RLHF ships
  them): the shared beginning is the prompt: the common leading messages of two conversations,
  or the common leading text of two strings (cut back to the last whitespace);
* **rankings**: ``{"prompt": ..., "completions": [best, ..., worst]}``, or with ``"scores"`` (one
  number per completion, higher is better) in any order; expanded into every pair of completions
  with different places (the score difference is the pair's ``margin``);
* **likes/dislikes**: ``{"prompt": ..., "completion": ..., "label": true|false}`` (KTO's format).

Everything becomes conversations end to end: a string prompt is one user turn and a string
answer one assistant turn, so the reward model and the policy see the same chat template.
Every row becomes a ``Pair`` (rankings: several) or a ``Thumb``; every problem is reported
together, by line, as one ``DatasetError``, before anything trains. A file must hold one kind
(``kind_of``); which kinds a task takes is in ``TASKS``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Iterator

from ragtune.errors import ConfigError, DatasetError
from ragtune.files import read_jsonl
from ragtune.train.data import MAX_ERRORS, Messages, check_turns

# what each training task accepts: reward models learn from pairs, rankings or likes/dislikes;
# DPO from pairs (rankings expand into them); KTO from likes/dislikes (pairs split into one of each)
TASKS = {"reward": ("pairs", "rankings", "thumbs"), "dpo": ("pairs", "rankings"), "kto": ("thumbs", "pairs", "rankings")}
KINDS = {"pairs": '{"prompt", "chosen", "rejected"} or {"chosen", "rejected"}',
         "rankings": '{"prompt", "completions"[, "scores"]}',
         "thumbs": '{"prompt", "completion", "label"}'}


@dataclass
class Pair:
    """One preference: ``chosen`` is better than ``rejected`` as the answer to ``prompt``."""

    id: str
    prompt: Messages  # the conversation so far, ending with a user turn
    chosen: Messages  # the answer turn(s): assistant messages
    rejected: Messages
    margin: float | None = None  # how much better (a rankings row's score difference)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Thumb:
    """One answer liked (``label`` True) or disliked."""

    id: str
    prompt: Messages
    completion: Messages
    label: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Preferences:
    """A preference file read and checked: its kind, and its pairs or thumbs."""

    kind: str  # pairs | rankings | thumbs
    first_line: int = 1
    pairs: list[Pair] = field(default_factory=list)
    thumbs: list[Thumb] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs) + len(self.thumbs)


def kind_of(row: dict) -> str | None:
    """Which kind of preference row this is, from its fields; None when none fits."""
    if "completions" in row:
        return "rankings"
    if "label" in row or "completion" in row:
        return "thumbs"
    if "chosen" in row or "rejected" in row:
        return "pairs"
    return None


def load_preferences(path: Path, task: str = "reward") -> Preferences:
    """Read and validate a preference file for ``task`` (reward, dpo or kto); every bad row is listed."""
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (preference JSONL: one of {'; '.join(KINDS.values())} per line)")
    prefs, errors, seen = None, [], {}
    for n, row in read_jsonl(path):
        try:
            kind = _row_kind(row, n)
            if prefs is None:  # the first row decides the file's kind
                prefs = Preferences(kind, first_line=n)
            if kind != prefs.kind:
                raise ValueError(f"line {n}: a {kind} row in a file of {prefs.kind} (line {prefs.first_line}); "
                                 "keep one kind per file")
            items = list(_items(row, n, kind))
            for item in items:
                key = _item_key(item)
                if key in seen:
                    raise ValueError(f"line {n}: duplicate of line {seen[key]} (the same prompt and answers)")
            for item in items:
                seen[_item_key(item)] = n
            (prefs.pairs if kind != "thumbs" else prefs.thumbs).extend(items)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise DatasetError(f"{path}: {len(errors)} bad row(s){more}:\n  " + "\n  ".join(errors[:MAX_ERRORS]))
    if prefs is None or not len(prefs):
        raise DatasetError(f"{path}: no preferences in the file (one of {'; '.join(KINDS.values())} per line)")
    if prefs.kind not in TASKS[task]:
        raise DatasetError(f"{path} holds {prefs.kind} ({KINDS[prefs.kind]}); --task {task} takes "
                           + " or ".join(f"{k} ({KINDS[k]})" for k in TASKS[task]))
    return prefs


def _row_kind(row: Any, n: int) -> str:
    if isinstance(row, ValueError):
        raise row
    if not isinstance(row, dict):
        raise ValueError(f"line {n}: expected a JSON object, got {type(row).__name__}")
    kind = kind_of(row)
    if kind is None:
        raise ValueError(f"line {n}: not a preference row (fields: {', '.join(row) or 'none'}); expected "
                         + "; ".join(KINDS.values()))
    return kind


def _items(row: dict, n: int, kind: str) -> Iterator[Pair | Thumb]:
    rid = str(row.get("id", n))
    meta = {k: v for k, v in row.items() if k not in {"id", "prompt", "chosen", "rejected", "completions", "scores",
                                                       "completion", "label"} and isinstance(v, (str, int, float, bool))}
    if kind == "thumbs":
        label = row.get("label")
        if not isinstance(label, bool):
            raise ValueError(f"line {n}: 'label' must be true (liked) or false (disliked), got {label!r}")
        prompt = prompt_turns(row.get("prompt"), n)
        yield Thumb(rid, prompt, answer_turns(row.get("completion"), n, "completion"), label, meta)
    elif kind == "rankings":
        yield from _ranking_pairs(row, n, rid, meta)
    else:
        yield _pair(row, n, rid, meta)


def _pair(row: dict, n: int, rid: str, meta: dict) -> Pair:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise ValueError(f"line {n}: missing '{key}' (a pair needs 'chosen' and 'rejected')")
    if "prompt" in row:
        prompt = prompt_turns(row["prompt"], n)
        chosen, rejected = answer_turns(row["chosen"], n, "chosen"), answer_turns(row["rejected"], n, "rejected")
    else:
        prompt, chosen, rejected = _implicit(row["chosen"], row["rejected"], n)
    if chosen == rejected:
        raise ValueError(f"line {n}: 'chosen' and 'rejected' are the same answer: nothing to prefer")
    return Pair(rid, prompt, chosen, rejected, None, meta)


def _ranking_pairs(row: dict, n: int, rid: str, meta: dict) -> Iterator[Pair]:
    prompt = prompt_turns(row.get("prompt"), n)
    completions = row.get("completions")
    if not isinstance(completions, list) or len(completions) < 2:
        raise ValueError(f"line {n}: 'completions' must be a list of at least two answers, best first")
    answers = [answer_turns(c, n, f"completions[{i}]") for i, c in enumerate(completions)]
    scores = row.get("scores")
    if scores is not None:
        if (not isinstance(scores, list) or len(scores) != len(answers)
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
            raise ValueError(f"line {n}: 'scores' must be one number per completion ({len(answers)}), higher is better")
    else:
        scores = list(range(len(answers), 0, -1))  # best first
    texts = [json.dumps(a, sort_keys=True) for a in answers]
    if len(set(texts)) < len(texts):
        raise ValueError(f"line {n}: 'completions' repeats an answer")
    order = sorted(range(len(answers)), key=lambda i: -scores[i])
    pairs = [Pair(f"{rid}/{a}>{b}", prompt, answers[a], answers[b], float(scores[a] - scores[b]) if row.get("scores") else None,
                  meta) for a, b in combinations(order, 2) if scores[a] > scores[b]]
    if not pairs:
        raise ValueError(f"line {n}: every completion has the same score: nothing to prefer")
    yield from pairs


def prompt_turns(value: Any, n: int) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"line {n}: 'prompt' is empty")
        return [{"role": "user", "content": value}]
    if value is None:
        raise ValueError(f"line {n}: missing 'prompt' (a string or a list of messages)")
    turns = check_turns(value, n, "prompt")
    if turns[-1]["role"] != "user":
        raise ValueError(f"line {n}: 'prompt' must end with a user turn (the answers follow it)")
    return turns


def answer_turns(value: Any, n: int, key: str) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"line {n}: '{key}' is empty")
        return [{"role": "assistant", "content": value}]
    if value is None:
        raise ValueError(f"line {n}: missing '{key}' (a string or a list of assistant messages)")
    turns = check_turns(value, n, key)
    if any(t["role"] != "assistant" for t in turns):
        raise ValueError(f"line {n}: '{key}' must hold assistant messages only (the prompt goes in 'prompt')")
    return turns


def _implicit(chosen: Any, rejected: Any, n: int) -> tuple[Messages, Messages, Messages]:
    """Prompt, chosen and rejected answers of an implicit-prompt pair (the shared beginning is the prompt)."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
        cut = max((i + 1 for i in range(cut) if chosen[i].isspace()), default=0)  # back to a word boundary
        prompt = chosen[:cut].strip()
        if not prompt:
            raise ValueError(f"line {n}: 'chosen' and 'rejected' share no beginning, so there is no implicit prompt; "
                             "give 'prompt' explicitly")
        return prompt_turns(prompt, n), answer_turns(chosen[cut:], n, "chosen"), answer_turns(rejected[cut:], n, "rejected")
    if isinstance(chosen, list) and isinstance(rejected, list):
        a, b = check_turns(chosen, n, "chosen"), check_turns(rejected, n, "rejected")
        shared = 0
        while shared < min(len(a), len(b)) and a[shared] == b[shared]:
            shared += 1
        if shared == 0:
            raise ValueError(f"line {n}: 'chosen' and 'rejected' share no leading messages, so there is no implicit "
                             "prompt; give 'prompt' explicitly")
        prompt = a[:shared]
        if prompt[-1]["role"] != "user":
            raise ValueError(f"line {n}: the conversations part after a {prompt[-1]['role']} turn; the shared part "
                             "(the implicit prompt) must end with a user turn")
        return prompt, answer_turns(a[shared:] or None, n, "chosen"), answer_turns(b[shared:] or None, n, "rejected")
    raise ValueError(f"line {n}: 'chosen' and 'rejected' must both be strings or both lists of messages")


def _item_key(item: Pair | Thumb) -> str:
    parts = [item.prompt, item.chosen, item.rejected] if isinstance(item, Pair) else [item.prompt, item.completion, item.label]
    return json.dumps(parts, sort_keys=True, ensure_ascii=False)


# -- splitting ---------------------------------------------------------------------------------
def split_pairs(items: list, eval_fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, eval) by a hash of (seed, prompt): every pair of one prompt (a ranking's pairs, HH's
    repeated prompts) lands on the same side, so no eval prompt is seen in training."""
    if not 0 <= eval_fraction < 1:
        raise ConfigError(f"eval_fraction = {eval_fraction}: must be at least 0 and below 1 (e.g. 0.1)")

    def score(item) -> float:
        key = json.dumps(item.prompt, sort_keys=True, ensure_ascii=False)
        return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16 ** 12

    held = [x for x in items if score(x) < eval_fraction]
    if eval_fraction > 0 and len(items) >= 2 and (not held or len(held) == len(items)):
        ranked = sorted(items, key=score)
        held = ranked[:1] if not held else ranked[:-1]
    held_ids = {id(x) for x in held}
    return [x for x in items if id(x) not in held_ids], held


# -- Anthropic HH-RLHF -------------------------------------------------------------------------
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_messages(text: str) -> Messages:
    """HH-RLHF's "\\n\\nHuman: ...\\n\\nAssistant: ..." text as chat messages."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise ValueError("does not start with '\\n\\nHuman:'")
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return turns


def import_hh(source: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """HH-RLHF rows (``chosen``/``rejected`` texts) as conversational pairs with an explicit prompt:
    ``{"id", "prompt": [...], "chosen": [assistant], "rejected": [assistant]}``. Rows that cannot be
    trained on are counted, not written: the two texts part before the last answer, an empty or
    identical answer, text that is not in HH's format."""
    rows, stats = [], {"read": 0, "written": 0, "parted_early": 0, "same_answer": 0, "empty_answer": 0, "not_hh": 0}
    for n, row in read_jsonl(source, strict=True):
        stats["read"] += 1
        try:
            chosen, rejected = hh_messages(row["chosen"]), hh_messages(row["rejected"])
        except (ValueError, KeyError, TypeError):
            stats["not_hh"] += 1
            continue
        prompt, a, b = chosen[:-1], chosen[-1], rejected[-1]
        if rejected[:-1] != prompt or a["role"] != "assistant" or b["role"] != "assistant" or not prompt:
            stats["parted_early"] += 1
        elif not a["content"] or not b["content"]:
            stats["empty_answer"] += 1
        elif a["content"] == b["content"]:
            stats["same_answer"] += 1
        else:
            rows.append({"id": str(row.get("id", n)), "prompt": prompt, "chosen": [a], "rejected": [b]})
    stats["written"] = len(rows)
    return rows, stats


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)
