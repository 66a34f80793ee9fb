"""Supervised fine-tuning: LoRA (PEFT) or full, on CPU or GPU, with a loop small enough to read.

Why our own loop and not TRL's ``SFTTrainer``: on a CPU the cost is the forward/backward pass,
and two things decide it: how many tokens are padding, and how big the output layer's logits
get. Here

- examples are tokenised with the model's own chat template and only the assistant's tokens
  carry loss (``labels`` is -100 everywhere else: prompt, system text, padding);
- batches group examples of similar length (sorted in buckets, then shuffled by batch), so
  padding stays small without packing (which on CPU would turn attention into one long
  sequence with a dense block mask);
- the decoder's hidden states are taken only where a label follows, and the vocabulary
  projection + cross-entropy run over those rows in chunks under activation checkpointing:
  the full ``batch x length x vocab`` logits never exist.

``benchmarks/sft.py`` measures this loop against TRL + PEFT on the same model and data. PEFT
makes and saves the adapters; everything else is plain torch.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ragtune.errors import DatasetError
from ragtune.train.distributed import World

IGNORE = -100
LOSS_CHUNK = 256  # rows of hidden states projected onto the vocabulary at a time (x 49k vocabulary: 50 MB of logits)
TRIMS_PER_PASS = 8  # see give_back_freed_memory


@dataclass
class Encoded:
    """One example as token ids, with the labels that carry loss (-100 elsewhere)."""

    id: str
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def encode(example, tokenizer, max_length: int) -> Encoded:
    """Token ids of the whole conversation; assistant turns (their text and end-of-turn token)
    are labelled, everything else is not. Relies on the chat template rendering a conversation
    as the rendering of its prefix plus the new turn (true of ChatML and most templates; checked)."""
    messages = example.messages
    ids = template_ids(tokenizer, messages, generation_prompt=False)
    labels = [IGNORE] * len(ids)
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        start = len(template_ids(tokenizer, messages[:i], generation_prompt=True))
        end = len(template_ids(tokenizer, messages[: i + 1], generation_prompt=False))
        if ids[:end] != template_ids(tokenizer, messages[: i + 1], generation_prompt=False):
            raise DatasetError(f"example {example.id}: the chat template does not render turns as prefixes; "
                               "this model's template is not supported for completion-only loss")
        labels[start:end] = ids[start:end]
    if len(ids) > max_length:
        raise DatasetError(f"example {example.id} has {len(ids)} tokens, more than max_length = {max_length}; "
                           "raise --max-length or shorten it (`ragtune data validate FILE --task sft` lists them all)")
    return Encoded(example.id, ids, labels)


def template_ids(tokenizer, messages, generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def length_batches(encoded: list, batch_size: int, seed: int, epoch: int,
                   length: Callable[[Any], int] = lambda e: len(e.input_ids)) -> list[list[int]]:
    """Indices grouped into batches of similar ``length``; the order of batches is shuffled per epoch.
    Examples are shuffled first, then sorted by length inside buckets of 50 batches."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(encoded)))
    rng.shuffle(order)
    bucket = batch_size * 50
    grouped = []
    for i in range(0, len(order), bucket):
        chunk = sorted(order[i:i + bucket], key=lambda j: length(encoded[j]))
        grouped += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(grouped)
    return grouped


def pad_rows(rows: list[list[int]], pad_id: int):
    """Right-padded (ids, attention_mask) tensors of token rows of different lengths."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def collate(encoded: list[Encoded], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels (padding is -100)."""
    ids, mask = pad_rows([e.input_ids for e in encoded], pad_id)
    labels, _ = pad_rows([e.labels for e in encoded], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def completion_loss(model, batch) -> tuple[Any, int]:
    """Summed cross-entropy over the labelled next tokens, and how many there were."""
    logps, _ = token_logprobs(model, batch)
    return -logps.sum(), int(logps.numel())


def sequence_logprobs(model, batch):
    """Each row's summed log-probability of its labelled tokens (DPO, KTO and RL compare these)."""
    logps, rows = token_logprobs(model, batch)
    return logps.new_zeros(batch["input_ids"].shape[0]).index_add(0, rows, logps)


def token_logprobs(model, batch):
    """The log-probability of every labelled next token (1-D, row-major) and the batch row it is in.

    The decoder runs on the whole batch; only the rows whose next token is labelled reach the
    output layer, in chunks whose logits are recomputed in the backward pass (checkpointing), so
    the full ``batch x length x vocabulary`` logits never exist."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    states, wanted = hidden[:, :-1][keep], targets[keep]
    rows = torch.arange(targets.shape[0]).unsqueeze(1).expand_as(targets)[keep]
    head = inner.get_output_embeddings()

    def chunk_logps(h, t):
        return -F.cross_entropy(head(h).float(), t, reduction="none")

    parts = [checkpoint(chunk_logps, states[i:i + LOSS_CHUNK], wanted[i:i + LOSS_CHUNK], use_reentrant=False)
             for i in range(0, states.shape[0], LOSS_CHUNK)]
    return (torch.cat(parts) if parts else hidden.new_zeros(0)), rows


@dataclass
class Batch:
    """What an objective computed on one batch: the summed loss and what it is a sum over."""

    loss: Any  # a scalar tensor: the sum over ``units``
    units: int  # labelled tokens (SFT), pairs or answers (reward models)
    tokens: int  # real tokens through the model
    padded: int  # batch x width, padding included


class CompletionLoss:
    """The SFT objective: cross-entropy on the assistant's tokens (``completion_loss``)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def length(self, item: Encoded) -> int:
        return len(item.input_ids)

    def __call__(self, model, items: list[Encoded]) -> Batch:
        batch = collate(items, self.pad_id)
        loss, n = completion_loss(model, batch)
        return Batch(loss, n, sum(len(e.input_ids) for e in items), batch["input_ids"].numel())


def learning_rate(step: int, total: int, peak: float, warmup_ratio: float, schedule: str) -> float:
    """Linear warm-up to ``peak``, then cosine / linear decay to 0 (or constant)."""
    warmup = max(1, int(round(total * warmup_ratio))) if warmup_ratio > 0 else 0
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress)


def build_model(base: Path, cfg, seed: int):
    """The model to train: the base with LoRA adapters (only they train) or the full base."""
    import torch
    from transformers import AutoModelForCausalLM

    from ragtune.models.base import quiet

    quiet()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})  # frozen inputs are fine
    if cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


@dataclass
class Stats:
    """What a training run measured, step by step and in total."""

    steps: int = 0
    examples: int = 0
    tokens: int = 0  # real (non-padding) tokens through the model
    trained_tokens: int = 0  # units that carried loss: labelled tokens (SFT), pairs or answers (reward models)
    padded_tokens: int = 0  # batch x width, padding included
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # per optimiser step: step, loss, lr, tokens_per_s
    eval_loss: list[float] = field(default_factory=list)  # per epoch

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def evaluate_loss(model, encoded: list, batch_size: int, objective) -> float | None:
    """Mean loss per unit (labelled token, pair, answer) of ``objective`` over ``encoded`` (no gradients)."""
    import torch

    if not encoded:
        return None
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for idx in length_batches(encoded, batch_size, seed=0, epoch=0, length=objective.length):
            b = objective(model, [encoded[i] for i in idx])
            total, count = total + float(b.loss), count + b.units
    model.train()
    return total / max(count, 1)


def train_loop(model, train: list, cfg, objective, eval_set: list | None = None,
               on_step: Callable[[dict[str, float]], None] | None = None, start: dict[str, Any] | None = None,
               on_checkpoint: Callable[[dict[str, Any]], None] | None = None) -> Stats:
    """Train ``model`` in place on ``objective`` (``CompletionLoss`` for SFT; the reward models'
    ``PairLoss``/``ThumbLoss``: anything with ``length(item)`` and ``(model, items) -> Batch``);
    ``start`` (from a checkpoint) skips the batches already seen.

    ``on_checkpoint(state)`` is called every ``cfg.checkpoint_steps`` optimiser steps and at each
    epoch's end with the loop's position (epoch, batch, step, stats) and the optimiser."""
    hooks = give_back_freed_memory(model)
    try:
        return _train(model, train, cfg, objective, eval_set, on_step, start, on_checkpoint)
    finally:
        for h in hooks:
            h.remove()


def _train(model, train, cfg, objective, eval_set, on_step, start, on_checkpoint) -> Stats:
    import torch

    world = World()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = max(1, math.ceil(per_epoch * cfg.epochs / cfg.grad_accum))
    stats, first_epoch, skip = Stats(), 0, 0
    if start:
        optimizer.load_state_dict(start["optimizer"])
        stats = start["stats"]
        first_epoch, skip = start["epoch"], start["batch"]
    model.train()
    best, stale = math.inf, 0
    for epoch in range(first_epoch, math.ceil(cfg.epochs)):
        batches = length_batches(train, cfg.batch_size, cfg.seed, epoch, length=objective.length)
        limit = len(batches) if epoch + 1 <= cfg.epochs else math.ceil(len(batches) * (cfg.epochs - epoch))
        for b in range(skip if epoch == first_epoch else 0, limit):
            t0 = time.perf_counter()
            chunk = [train[i] for i in batches[b][world.rank::world.size]]  # each process its share of the batch
            out = objective(model, chunk) if chunk else None  # a last, small batch may leave a process nothing
            counts = world.sum([out.units if out else 0, len(chunk), out.tokens if out else 0, out.padded if out else 0,
                                float(out.loss.detach()) if out else 0.0])
            n, loss_sum = int(counts[0]), counts[4]
            if out:
                (out.loss / max(n, 1) / cfg.grad_accum).backward()  # / all processes' units: summed grads = the mean
            stats.trained_tokens += n
            stats.examples += int(counts[1])
            stats.tokens += int(counts[2])
            stats.padded_tokens += int(counts[3])
            if (b + 1) % cfg.grad_accum == 0 or b + 1 == limit:
                world.sum_grads(params)
                lr = learning_rate(stats.steps, total_steps, cfg.learning_rate, cfg.warmup_ratio, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                stats.steps += 1
            stats.seconds += time.perf_counter() - t0
            record = {"step": stats.steps, "total_steps": total_steps, "epoch": epoch + (b + 1) / len(batches), "loss": loss_sum / max(n, 1),
                      "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": stats.tokens_per_s,
                      "tokens": stats.tokens, "seconds": stats.seconds}
            stats.history.append(record)
            if on_step:
                on_step(record)
            if on_checkpoint and world.rank == 0 and stats.steps % cfg.checkpoint_steps == 0 and (b + 1) % cfg.grad_accum == 0:
                on_checkpoint({"epoch": epoch, "batch": b + 1, "optimizer": optimizer, "stats": stats})
        if eval_set:
            stats.eval_loss.append(evaluate_loss(model, eval_set, cfg.batch_size, objective))
        if on_checkpoint and world.rank == 0:
            on_checkpoint({"epoch": epoch + 1, "batch": 0, "optimizer": optimizer, "stats": stats})
        if cfg.early_stopping and stats.eval_loss:
            best, stale = (stats.eval_loss[-1], 0) if stats.eval_loss[-1] < best else (best, stale + 1)
            if stale >= cfg.early_stopping:
                break
    return stats


def give_back_freed_memory(model) -> list:
    """On CPU with glibc: hand freed heap pages back to the system a few times per pass.

    Every decoder layer allocates and frees temporaries the size of the hidden states while the
    checkpointed layer inputs (the same size) stay alive between them; glibc cannot reuse the
    holes well and keeps them, so the process grows to several times its live tensors.
    ``malloc_trim(0)`` after the forward and the backward pass of every few layers releases the
    free pages. benchmarks/sft.py, SmolLM2 LoRA, batch 8 (with the 256-row loss chunks): peak RSS
    3.3 GB -> 1.7-2.0 GB for 188 -> 162-164 tokens/s; a fixed mmap threshold instead cost a third of the
    speed. No effect off glibc or on GPU. Returns the hook handles (``.remove()`` after training)."""
    import ctypes

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(inner.get_decoder(), "layers", None)
    if layers is None or next(model.parameters()).device.type != "cpu":
        return []
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return []

    def hook(*_):  # a hook returning something would replace the layer's output / gradients
        trim(0)

    every = list(layers)[:: max(1, len(layers) // TRIMS_PER_PASS)]
    return [h for layer in every for h in (layer.register_forward_hook(hook), layer.register_full_backward_hook(hook))]


def stats_json(stats: Stats) -> dict[str, Any]:
    return {"steps": stats.steps, "examples": stats.examples, "tokens": stats.tokens, "trained_tokens": stats.trained_tokens,
            "padded_tokens": stats.padded_tokens, "seconds": stats.seconds, "tokens_per_s": stats.tokens_per_s,
            "eval_loss": stats.eval_loss, "history": stats.history}


def stats_from_json(data: dict[str, Any]) -> Stats:
    fields = {k: data[k] for k in ("steps", "examples", "tokens", "trained_tokens", "padded_tokens", "seconds",
                                   "history", "eval_loss")}
    return Stats(**fields)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
