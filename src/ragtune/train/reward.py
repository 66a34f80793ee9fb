"""Reward models: the base LLM with a scalar head, trained on preferences, scoring whole conversations.

A reward is read at the **last token of the conversation as the chat template renders it**
(prompt and answer, end-of-turn included, no generation prompt), found from the attention mask,
never from a pad token id: a tokenizer whose pad token is its end-of-turn token cannot make the
model score the wrong position (TRL #937), and training and scoring encode the same way
(``conversation_ids``), so no end-of-sequence token is added at one and missing at the other.

- pairs (and rankings, expanded): Bradley–Terry, ``-log sigmoid(r_chosen - r_rejected - margin)``;
- likes/dislikes: pointwise, binary cross-entropy of ``sigmoid(r)`` against the label.

The decoder gets LoRA adapters (``method = "lora"``; the head always trains) or trains whole; batches
group similar lengths and run through the SFT loop (``train.sft.train_loop``) with this module's
objectives. ``evaluate_pairs`` measures a reward model honestly: pairwise accuracy with a bootstrap
95% interval, the mean margin, the accuracy of "the longer answer wins" on the same pairs, and the
accuracy on a length-balanced subset (as many pairs whose chosen answer is the longer as the shorter).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import DatasetError
from ragtune.train.preferences import Pair, Thumb
from ragtune.train.sft import Batch, pad_rows, template_ids

HEAD_FILE = "score.safetensors"
BOOTSTRAP = 1000  # resamples for the accuracy interval


@dataclass
class EncodedPair:
    id: str
    chosen: list[int]
    rejected: list[int]
    margin: float = 0.0
    chosen_chars: int = 0  # answer lengths, for the length baseline
    rejected_chars: int = 0


@dataclass
class EncodedThumb:
    id: str
    ids: list[int]
    label: bool


def conversation_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The token ids a reward is read from: the whole conversation through the chat template."""
    return template_ids(tokenizer, messages, generation_prompt=False)


def _checked(item_id: str, ids: list[int], max_length: int) -> list[int]:
    if len(ids) > max_length:
        raise DatasetError(f"preference {item_id} has {len(ids)} tokens, more than max_length = {max_length}; raise "
                           "--max-length or shorten it (`ragtune data validate FILE --task reward` lists them all)")
    return ids


def encode_pair(pair: Pair, tokenizer, max_length: int) -> EncodedPair:
    chosen = _checked(pair.id, conversation_ids(tokenizer, pair.prompt + pair.chosen), max_length)
    rejected = _checked(pair.id, conversation_ids(tokenizer, pair.prompt + pair.rejected), max_length)
    return EncodedPair(pair.id, chosen, rejected, pair.margin or 0.0, sum(len(m["content"]) for m in pair.chosen),
                       sum(len(m["content"]) for m in pair.rejected))


def encode_thumb(thumb: Thumb, tokenizer, max_length: int) -> EncodedThumb:
    return EncodedThumb(thumb.id, _checked(thumb.id, conversation_ids(tokenizer, thumb.prompt + thumb.completion), max_length),
                        thumb.label)


def encode_item(item: Pair | Thumb, tokenizer, max_length: int) -> EncodedPair | EncodedThumb:
    return encode_pair(item, tokenizer, max_length) if isinstance(item, Pair) else encode_thumb(item, tokenizer, max_length)


# -- the model -------------------------------------------------------------------------------------
def _module():
    import torch

    class RewardModel(torch.nn.Module):
        """A causal LM's decoder (with or without LoRA) and a linear head on its last hidden state."""

        def __init__(self, lm) -> None:
            super().__init__()
            self.lm = lm
            hidden = self.inner.config.hidden_size
            self.score = torch.nn.Linear(hidden, 1)
            torch.nn.init.normal_(self.score.weight, std=1 / (hidden + 1) ** 0.5)
            torch.nn.init.zeros_(self.score.bias)

        @property
        def inner(self):
            return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

        def get_decoder(self):
            return self.inner.get_decoder()

        def forward(self, input_ids, attention_mask):
            hidden = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            last = attention_mask.sum(-1) - 1  # right padding: the last real token of each row
            return self.score(hidden[torch.arange(hidden.shape[0]), last]).squeeze(-1)

    return RewardModel


def build_reward_model(base: Path, cfg, seed: int):
    """The base (a HF causal-LM folder) with a fresh scalar head; LoRA on the decoder or full."""
    from ragtune.train.sft import build_model

    model = _module()(build_model(base, cfg, seed))
    for p in model.score.parameters():
        p.requires_grad_(True)
    return model


def save_reward_model(model, folder: Path, method: str) -> None:
    """``adapter/`` (LoRA) or ``model/`` (full), and the head in ``score.safetensors``."""
    from safetensors.torch import save_file

    model.lm.save_pretrained(str(folder / ("adapter" if method == "lora" else "model")))
    save_file({k: v.detach().contiguous() for k, v in model.score.state_dict().items()}, str(folder / HEAD_FILE))


def load_reward_model(base: Path, adapter: Path | None, folder: Path):
    """A registered reward model for scoring (eval mode, no gradients needed)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ragtune.models.base import quiet

    quiet()
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, str(adapter))
    model = _module()(lm)
    model.score.load_state_dict(load_file(str(folder / HEAD_FILE)))
    return model.eval()


# -- objectives for the training loop --------------------------------------------------------------
def rewards(model, rows: list[list[int]], pad_id: int):
    ids, mask = pad_rows(rows, pad_id)
    return model(ids, mask), int(mask.sum()), ids.numel()


class PairLoss:
    """Bradley–Terry over pairs: chosen and rejected conversations in one forward pass."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def length(self, item: EncodedPair) -> int:
        return max(len(item.chosen), len(item.rejected))

    def __call__(self, model, items: list[EncodedPair]) -> Batch:
        import torch
        import torch.nn.functional as F

        r, tokens, padded = rewards(model, [p.chosen for p in items] + [p.rejected for p in items], self.pad_id)
        margin = torch.tensor([p.margin for p in items], dtype=r.dtype)
        loss = -F.logsigmoid(r[: len(items)] - r[len(items):] - margin).sum()
        return Batch(loss, len(items), tokens, padded)


class ThumbLoss:
    """Pointwise: each liked (1) or disliked (0) answer's reward through a sigmoid, cross-entropy."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def length(self, item: EncodedThumb) -> int:
        return len(item.ids)

    def __call__(self, model, items: list[EncodedThumb]) -> Batch:
        import torch
        import torch.nn.functional as F

        r, tokens, padded = rewards(model, [t.ids for t in items], self.pad_id)
        labels = torch.tensor([float(t.label) for t in items], dtype=r.dtype)
        return Batch(F.binary_cross_entropy_with_logits(r, labels, reduction="sum"), len(items), tokens, padded)


# -- evaluation ------------------------------------------------------------------------------------
def score_rows(model, rows: list[list[int]], pad_id: int, batch_size: int = 8) -> list[float]:
    """The reward of each encoded conversation, batched by length (order kept)."""
    import torch

    out: list[float] = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            r, _, _ = rewards(model, [rows[j] for j in idx], pad_id)
            for j, value in zip(idx, r.tolist()):
                out[j] = value
    model.train(was_training)
    return out


@dataclass
class RewardEval:
    """How well a reward model orders held-out pairs, and whether length alone would do as well."""

    pairs: int
    accuracy: float  # share of pairs where the chosen answer gets the higher reward (ties count half)
    accuracy_low: float  # bootstrap 95% interval
    accuracy_high: float
    mean_margin: float  # mean of r_chosen - r_rejected
    length_baseline_accuracy: float  # "the longer answer wins" on the same pairs (ties count half)
    balanced_pairs: int  # the length-balanced subset: as many pairs with the longer answer chosen as rejected
    balanced_accuracy: float | None
    rewards_chosen: list[float]
    rewards_rejected: list[float]

    def metrics(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, list)}


def evaluate_pairs(model, pairs: list[EncodedPair], pad_id: int, batch_size: int = 8, seed: int = 0) -> RewardEval:
    if not pairs:
        raise DatasetError("no pairs to evaluate the reward model on")
    rc = score_rows(model, [p.chosen for p in pairs], pad_id, batch_size)
    rr = score_rows(model, [p.rejected for p in pairs], pad_id, batch_size)
    right = [_win(a, b) for a, b in zip(rc, rr)]
    longer = [_win(p.chosen_chars, p.rejected_chars) for p in pairs]
    low, high = bootstrap_interval(right, seed)
    balanced = length_balanced(pairs, seed)
    return RewardEval(len(pairs), sum(right) / len(right), low, high, sum(a - b for a, b in zip(rc, rr)) / len(pairs),
                      sum(longer) / len(longer), len(balanced),
                      sum(right[i] for i in balanced) / len(balanced) if balanced else None, rc, rr)


def _win(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def bootstrap_interval(values: list[float], seed: int = 0, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean over resamples drawn with replacement."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * (resamples - 1))], means[int(0.975 * (resamples - 1))]


def length_balanced(pairs: list[EncodedPair], seed: int = 0) -> list[int]:
    """Indices of a subset where the chosen answer is the longer in exactly half the pairs (equal lengths left out)."""
    longer = [i for i, p in enumerate(pairs) if p.chosen_chars > p.rejected_chars]
    shorter = [i for i, p in enumerate(pairs) if p.chosen_chars < p.rejected_chars]
    rng = random.Random(seed)
    n = min(len(longer), len(shorter))
    return sorted(rng.sample(longer, n) + rng.sample(shorter, n))


def load_registered(root: Path, name: str):
    """(reward model, tokenizer) of the registered reward model ``name``."""
    from transformers import AutoTokenizer

    from ragtune.errors import ModelError
    from ragtune.models.registry import load_card, resolve

    card = load_card(root, name)
    if card.task != "reward":
        raise ModelError(f"{name!r} is a {card.task} model, not a reward model; train one with "
                         f"`ragtune finetune reward --data PAIRS --name NAME`")
    parts = resolve(root, name)
    return load_reward_model(parts.base, parts.adapter, parts.folder), AutoTokenizer.from_pretrained(str(parts.tokenizer))


def evaluate_registered(root: Path, name: str, data: Path, max_length: int, batch_size: int = 8, seed: int = 0) -> RewardEval:
    """``evaluate_pairs`` of the registered reward model ``name`` on a preference file (pairs or rankings)."""
    from ragtune.train.preferences import load_preferences

    prefs = load_preferences(data, "dpo")  # the kinds that make pairs
    model, tokenizer = load_registered(root, name)
    encoded, problems = [], []
    for pair in prefs.pairs:
        try:
            encoded.append(encode_pair(pair, tokenizer, max_length))
        except DatasetError as e:
            problems.append(str(e))
    if problems:
        raise DatasetError(f"{data}: {len(problems)} pair(s) cannot be scored:\n  " + "\n  ".join(problems[:10]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return evaluate_pairs(model, encoded, pad, batch_size, seed)


def score_file(root: Path, name: str, data: Path, max_length: int, batch_size: int = 8) -> list[dict[str, Any]]:
    """Every row of ``data`` with its ``reward`` under the registered reward model ``name``. A row is a
    conversation ending with the assistant's answer: ``{"prompt", "completion"}`` (strings or messages)
    or ``{"messages": [...]}``; bad rows are listed by line before anything is scored."""
    from ragtune.files import read_jsonl
    from ragtune.train.data import MAX_ERRORS, check_turns
    from ragtune.train.preferences import answer_turns, prompt_turns

    rows, conversations, errors = [], [], []
    for n, row in read_jsonl(data):
        try:
            if isinstance(row, ValueError):
                raise row
            if not isinstance(row, dict):
                raise ValueError(f"line {n}: expected a JSON object, got {type(row).__name__}")
            if "messages" in row:
                turns = check_turns(row["messages"], n, "messages")
                if turns[-1]["role"] != "assistant":
                    raise ValueError(f"line {n}: the conversation must end with the assistant's answer (what is scored)")
            else:
                turns = prompt_turns(row.get("prompt"), n) + answer_turns(row.get("completion"), n, "completion")
        except ValueError as e:
            errors.append(str(e))
            continue
        rows.append(row)
        conversations.append(turns)
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise DatasetError(f"{data}: {len(errors)} bad row(s){more}:\n  " + "\n  ".join(errors[:MAX_ERRORS]))
    model, tokenizer = load_registered(root, name)
    ids = [_checked(str(r.get("id", i + 1)), conversation_ids(tokenizer, t), max_length) for i, (r, t) in enumerate(zip(rows, conversations))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [{**r, "reward": value} for r, value in zip(rows, score_rows(model, ids, pad, batch_size))]
