"""On-policy optimisation of the generator against a reward: RLOO (default) and GRPO.

Each step samples ``samples`` answers to each of ``prompts_per_step`` prompts in one batch, scores
them (a registered reward model, or any ``Scorer``), and moves the policy towards the answers
that scored above the others of their prompt, while a KL penalty keeps it near the reference (the
model it started from). No value model: the group is the baseline.

- **RLOO** (Ahmadian et al. 2024): the reward of an answer is ``score - kl_coef * KL`` with ``KL =
  sum over its tokens of log p(token) - log p_ref(token)`` (the KL folded into the reward: exactly
  "maximise the reward model, stay near the original"); its advantage is that reward minus the mean
  of the other answers to the same prompt; the loss is ``-advantage * log p(answer)`` averaged
  over the answers (one update per sample batch, so PPO's ratio is 1 and its clipping never acts).
- **GRPO** (Shao et al. 2024): advantages are the scores normalised within the group; the KL is a
  per-token loss term (the k3 estimator ``exp(ref - logp) - (ref - logp) - 1``) weighted by
  ``kl_coef``, which must be above 0 here (TRL 1.16 defaults it to 0: no KL at all).

The reference costs no second model with LoRA (the adapter is switched off to compute it); a full
fine-tune keeps a frozen copy. Each step is seeded (``seed + step``), so a resumed run samples what
the uninterrupted one would have. Per step the history has the mean score, KL, answer length,
entropy (estimated as the mean ``-log p`` of the sampled tokens), the share of answers cut at
``max_new_tokens``, and the loss; a KL above ``kl_stop`` for ``KL_PATIENCE`` steps stops the run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ragtune.errors import ConfigError, DatasetError
from ragtune.train.data import Messages
from ragtune.train.sft import IGNORE, Encoded, Stats, collate, learning_rate, template_ids, token_logprobs

ALGORITHMS = ("rloo", "grpo")
KL_PATIENCE = 3  # steps in a row above kl_stop before the run stops


@dataclass
class Answer:
    """One sampled answer to a prompt."""

    prompt: Messages
    ids: list[int]  # the new tokens, the end-of-turn token included unless cut
    text: str
    truncated: bool


class Scorer(Protocol):
    """Scores answers: one float per answer, higher is better."""

    def __call__(self, answers: list[Answer]) -> list[float]: ...


class RewardModelScorer:
    """A registered reward model scoring each prompt + answer conversation through the chat template
    (the same encoding it was trained on)."""

    def __init__(self, model, tokenizer, batch_size: int = 16) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @classmethod
    def registered(cls, root: Path, name: str, batch_size: int = 16) -> "RewardModelScorer":
        from ragtune.train.reward import load_registered

        return cls(*load_registered(root, name), batch_size=batch_size)

    def __call__(self, answers: list[Answer]) -> list[float]:
        from ragtune.train.reward import conversation_ids, score_rows

        rows = [conversation_ids(self.tokenizer, a.prompt + [{"role": "assistant", "content": a.text}]) for a in answers]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return score_rows(self.model, rows, pad, self.batch_size)


# -- prompts ---------------------------------------------------------------------------------------
def load_prompts(path: Path) -> list[Messages]:
    """Prompts from JSONL: ``{"prompt": str | messages}`` or ``{"messages": [..., user turn]}`` rows,
    or a preference file (its prompts: explicit, or the shared beginning of implicit pairs); each
    prompt once, in file order. Every bad row is listed by line."""
    from ragtune.files import read_jsonl
    from ragtune.train.data import MAX_ERRORS, check_turns
    from ragtune.train.preferences import _implicit, prompt_turns

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (prompts: JSONL rows with 'prompt', or 'messages' ending with a user turn)")
    prompts, seen, errors = [], set(), []
    for n, row in read_jsonl(path):
        try:
            if isinstance(row, ValueError):
                raise row
            if not isinstance(row, dict):
                raise ValueError(f"line {n}: expected a JSON object, got {type(row).__name__}")
            if "prompt" in row:
                turns = prompt_turns(row["prompt"], n)
            elif "messages" in row:
                turns = check_turns(row["messages"], n, "messages")
                if turns[-1]["role"] != "user":
                    raise ValueError(f"line {n}: 'messages' must end with a user turn (the answer is sampled)")
            elif "chosen" in row and "rejected" in row:
                turns = _implicit(row["chosen"], row["rejected"], n)[0]
            else:
                raise ValueError(f"line {n}: no 'prompt' (a string or messages), 'messages', or 'chosen'/'rejected'")
        except ValueError as e:
            errors.append(str(e))
            continue
        key = repr(turns)
        if key not in seen:
            seen.add(key)
            prompts.append(turns)
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise DatasetError(f"{path}: {len(errors)} bad row(s){more}:\n  " + "\n  ".join(errors[:MAX_ERRORS]))
    if not prompts:
        raise DatasetError(f"{path}: no prompts in the file")
    return prompts


def split_prompts(prompts: list[Messages], eval_fraction: float, seed: int = 0) -> tuple[list[Messages], list[Messages]]:
    """(train, held out): a prompt's side depends only on its text and the seed."""
    def side(p: Messages) -> float:
        digest = hashlib.sha256(f"{seed}:{p!r}".encode()).hexdigest()
        return int(digest[:8], 16) / 0xFFFFFFFF

    held = [p for p in prompts if side(p) < eval_fraction]
    return [p for p in prompts if side(p) >= eval_fraction], held


def encode_prompt(tokenizer, prompt: Messages, room: int) -> list[int]:
    ids = template_ids(tokenizer, prompt, generation_prompt=True)
    if len(ids) > room:
        raise DatasetError(f"a prompt has {len(ids)} tokens, more than max_length - max_new_tokens = {room}: "
                           f"{prompt[-1]['content'][:60]!r}...; raise --max-length or shorten it")
    return ids


# -- sampling and log-probs ------------------------------------------------------------------------
def sample(model, tokenizer, prompts: list[Messages], prompt_ids: list[list[int]], samples: int, rcfg, eos_id: int,
           batch_size: int) -> list[Answer]:
    """``samples`` answers per prompt (at ``rcfg.temperature``; 0 = greedy), in prompt order."""
    from ragtune.generate.transformers import pad_token, sample_batch

    out = sample_batch(model, prompt_ids, rcfg.max_new_tokens, pad_token(tokenizer), eos_id, batch_size=batch_size,
                       samples=samples, temperature=rcfg.temperature, top_k=rcfg.top_k)
    return [Answer(prompts[i // samples], ids, tokenizer.decode(ids, skip_special_tokens=True).strip(),
                   not ids or ids[-1] != eos_id) for i, ids in enumerate(out)]


def end_of_turn(tokenizer) -> int:
    """The token an assistant turn ends with (ChatML's ``<|im_end|>``), else end-of-sequence."""
    return tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else tokenizer.eos_token_id


def rows_of(prompt_ids: list[list[int]], answers: list[Answer], samples: int) -> list[Encoded]:
    """Prompt + answer token rows with the answer labelled, for log-probs of the answer."""
    return [Encoded(str(i), prompt_ids[i // samples] + a.ids, [IGNORE] * len(prompt_ids[i // samples]) + a.ids)
            for i, a in enumerate(answers)]


@contextlib.contextmanager
def as_reference(model, reference):
    """The reference model: the frozen copy (full fine-tune), or the policy with its adapter switched off."""
    if reference is not None:
        yield reference
    else:
        with model.disable_adapter():
            yield model


def per_row(values, rows, n: int):
    """Sums of token values per row (``rows``: each value's row)."""
    return values.new_zeros(n).index_add(0, rows, values)


# -- the loop --------------------------------------------------------------------------------------
def advantages(scores, kl, groups: int, samples: int, rcfg):
    """RLOO: (score - kl_coef * KL) minus the mean of the other samples of the prompt. GRPO: the
    scores standardised within the group (the KL is a loss term there)."""
    if rcfg.algorithm == "rloo":
        r = (scores - rcfg.kl_coef * kl).view(groups, samples)
        return (r - (r.sum(1, keepdim=True) - r) / (samples - 1)).view(-1)
    r = scores.view(groups, samples)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)


def check(rcfg) -> None:
    if rcfg.algorithm not in ALGORITHMS:
        raise ConfigError(f"[rl] algorithm = {rcfg.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    if rcfg.samples < 2:
        raise ConfigError(f"[rl] samples = {rcfg.samples}: at least 2 answers per prompt are needed (each is judged "
                          "against the others)")
    if rcfg.algorithm == "grpo" and rcfg.kl_coef <= 0:
        raise ConfigError("[rl] algorithm = \"grpo\" needs kl_coef > 0: without it nothing keeps the policy near the base "
                          "model (TRL defaults GRPO to no KL at all); set e.g. kl_coef = 0.05")
    if rcfg.max_new_tokens < 1 or rcfg.prompts_per_step < 1 or rcfg.steps < 1:
        raise ConfigError("[rl] max_new_tokens, prompts_per_step and steps must be at least 1")


def train_rl(model, tokenizer, prompts: list[Messages], prompt_ids: list[list[int]], scorer: Scorer, cfg, rcfg,
             start: dict[str, Any] | None = None, on_step: Callable[[dict], None] | None = None,
             on_checkpoint: Callable[[dict], None] | None = None, log=print) -> Stats:
    """``rcfg.steps`` optimiser steps of RLOO or GRPO on ``prompts`` (cycled in a seeded order);
    ``start`` (from a checkpoint) continues after its step."""
    import random

    import torch

    from ragtune.generate.transformers import pad_token

    check(rcfg)
    eos = end_of_turn(tokenizer)
    pad = pad_token(tokenizer)
    reference = None if hasattr(model, "disable_adapter") else _frozen(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    stats, first = Stats(), 0
    if start:
        optimizer.load_state_dict(start["optimizer"])
        stats, first = start["stats"], start["batch"]
    order = list(range(len(prompts)))
    random.Random(cfg.seed).shuffle(order)
    over_budget = 0
    for step in range(first, rcfg.steps):
        t0 = time.perf_counter()
        picked = [order[(step * rcfg.prompts_per_step + j) % len(order)] for j in range(rcfg.prompts_per_step)]
        torch.manual_seed(cfg.seed * 100003 + step)
        answers = sample(model, tokenizer, [prompts[i] for i in picked], [prompt_ids[i] for i in picked], rcfg.samples, rcfg,
                         eos, batch_size=len(picked) * rcfg.samples)
        scores = torch.tensor(scorer(answers), dtype=torch.float32)
        lengths = torch.tensor([float(len(a.ids)) for a in answers])
        truncated = torch.tensor([float(a.truncated) for a in answers])
        scores_adj = scores - rcfg.length_penalty * lengths - rcfg.truncation_penalty * truncated
        batch = collate(rows_of([prompt_ids[i] for i in picked], answers, rcfg.samples), pad)
        n = len(answers)
        model.train()
        with torch.no_grad(), as_reference(model, reference) as ref_model:
            ref_logps, _ = token_logprobs(ref_model, batch)
        logps, rows = token_logprobs(model, batch)
        token_kl = logps.detach() - ref_logps
        kl = per_row(token_kl, rows, n)
        adv = advantages(scores_adj, kl, len(picked), rcfg.samples, rcfg)
        if rcfg.algorithm == "rloo":
            loss = -(adv * per_row(logps, rows, n)).mean()
        else:  # per-token policy gradient + k3 KL, averaged over the batch's answer tokens
            k3 = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
            loss = (-adv[rows] * logps + rcfg.kl_coef * k3).sum() / max(logps.numel(), 1)
        loss.backward()
        lr = learning_rate(step, rcfg.steps, cfg.learning_rate, cfg.warmup_ratio, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats.steps = step + 1
        stats.examples += n
        stats.tokens += int(batch["attention_mask"].sum())
        stats.padded_tokens += batch["input_ids"].numel()
        stats.trained_tokens += int(logps.numel())
        stats.seconds += time.perf_counter() - t0
        record = {"step": step + 1, "total_steps": rcfg.steps, "loss": float(loss.detach()), "lr": lr,
                  "reward": float(scores.mean()), "kl": float(kl.mean()), "length": float(lengths.mean()),
                  "entropy": float(-logps.detach().mean()) if logps.numel() else 0.0, "truncated": float(truncated.mean()),
                  "tokens_per_s": stats.tokens_per_s, "tokens": stats.tokens, "seconds": stats.seconds}
        stats.history.append(record)
        if on_step:
            on_step(record)
        if on_checkpoint and ((step + 1) % cfg.checkpoint_steps == 0 or step + 1 == rcfg.steps):
            on_checkpoint({"epoch": 0, "batch": step + 1, "optimizer": optimizer, "stats": stats})
        over_budget = over_budget + 1 if rcfg.kl_stop and record["kl"] > rcfg.kl_stop else 0
        if over_budget >= KL_PATIENCE:
            log(f"stopped at step {step + 1}: the KL to the base model stayed above [rl] kl_stop = {rcfg.kl_stop} for "
                f"{KL_PATIENCE} steps (the policy is drifting); lower the learning rate or raise kl_coef")
            break
    return stats


def _frozen(model):
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


# -- checks after a run ----------------------------------------------------------------------------
def distinct_2(texts: list[str]) -> float:
    """Distinct word bigrams over all bigrams of ``texts`` (1.0 = no bigram repeated)."""
    grams = [tuple(words[i:i + 2]) for t in texts for words in [t.split()] for i in range(len(words) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def policy_answers(model, tokenizer, prompts: list[Messages], rcfg, seed: int, batch_size: int = 16) -> list[Answer]:
    """One sampled answer per held-out prompt (seeded: the base and the tuned model draw alike)."""
    import torch

    eos = end_of_turn(tokenizer)
    torch.manual_seed(seed)
    ids = [template_ids(tokenizer, p, generation_prompt=True) for p in prompts]
    return sample(model, tokenizer, prompts, ids, 1, rcfg, eos, batch_size)


def answer_figures(answers: list[Answer], scorer: Scorer | None) -> dict[str, Any]:
    """Mean reward-model score (when there is one), length, distinct-2 and end-of-turn rate of answers."""
    out: dict[str, Any] = {"answers": len(answers), "length": sum(len(a.ids) for a in answers) / max(len(answers), 1),
                           "distinct_2": distinct_2([a.text for a in answers]),
                           "eos_rate": sum(not a.truncated for a in answers) / max(len(answers), 1)}
    if scorer is not None and answers:
        scores = scorer(answers)
        out.update(reward_score=sum(scores) / len(scores), scores=scores)
    return out


def sequence_kl(model, tokenizer, answers: list[Answer], reference=None, batch_size: int = 16) -> float:
    """Mean over ``answers`` (sampled from ``model``) of sum log p - log p_ref: a sequence-level KL estimate."""
    import torch

    from ragtune.generate.transformers import pad_token

    if not answers:
        return 0.0
    total = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(answers), batch_size):
            chunk = answers[i:i + batch_size]
            ids = [template_ids(tokenizer, a.prompt, generation_prompt=True) for a in chunk]
            batch = collate(rows_of(ids, chunk, 1), pad_token(tokenizer))
            logps, rows = token_logprobs(model, batch)
            with as_reference(model, reference) as ref_model:
                ref, _ = token_logprobs(ref_model, batch)
            total += float(per_row(logps - ref, rows, len(chunk)).sum())
    model.train(was_training)
    return total / len(answers)


def win_rate(judge: Scorer, base: list[Answer], tuned: list[Answer], seed: int = 0) -> dict[str, Any]:
    """How often the judge scores the tuned model's answer above the base's for the same prompt (ties
    half), with a bootstrap 95% interval; and the same on the prompts where the tuned answer is not
    longer (a length-controlled view: a win there is not bought with length)."""
    from ragtune.train.reward import _win, bootstrap_interval

    a, b = judge(tuned), judge(base)
    wins = [_win(x, y) for x, y in zip(a, b)]
    low, high = bootstrap_interval(wins, seed)
    short = [w for w, t, o in zip(wins, tuned, base) if len(t.ids) <= len(o.ids)]
    return {"win_rate": sum(wins) / len(wins), "win_rate_low": low, "win_rate_high": high, "win_rate_prompts": len(wins),
            "win_rate_not_longer": sum(short) / len(short) if short else None, "win_rate_not_longer_prompts": len(short)}



class PolicyCheck:
    """The checks after every preference run (rl, dpo, kto), base vs tuned on the same held-out
    prompts: one seeded sampled answer each; the reward model's mean score (``scorer``, when the run
    has one); the win rate of tuned over base judged by a *second* reward model (``judge``: a higher
    score under the model trained against proves nothing) with its interval and length-controlled
    view; the sequence KL to the base; length, distinct-2 and end-of-turn rate. A score that rises
    while the answers grow by more than a fifth, with no win left among the not-longer answers, is
    flagged as a length effect."""

    def __init__(self, prompts: list[Messages], rcfg, seed: int, scorer: Scorer | None = None, judge: Scorer | None = None):
        self.prompts, self.rcfg, self.seed, self.scorer, self.judge = prompts[: rcfg.eval_prompts], rcfg, seed, scorer, judge

    def measure(self, model, tokenizer, which: str, before: dict | None = None, reference=None) -> dict[str, Any]:
        """Figures of ``model`` ("base" or "tuned"; tuned also against ``before``, the base's figures)."""
        if not self.prompts:
            return {}
        answers = policy_answers(model, tokenizer, self.prompts, self.rcfg, self.seed)
        out = {**answer_figures(answers, self.scorer), "answer_rows": [_row(a) for a in answers]}
        if which == "tuned":
            out["kl_to_base"] = sequence_kl(model, tokenizer, answers, reference)
            base = [Answer(p, r["ids"], r["text"], r["truncated"]) for p, r in zip(self.prompts, (before or {}).get("answer_rows", []))]
            if self.judge is not None and len(base) == len(answers):
                out.update(win_rate(self.judge, base, answers, self.seed))
        return out

    @staticmethod
    def metrics(before: dict, after: dict) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("reward_score", "length", "distinct_2", "eos_rate"):
            if after.get(key) is not None and before.get(key) is not None:
                out[f"{key}_before"], out[f"{key}_after"] = before[key], after[key]
                out[f"{key}_change"] = after[key] - before[key]
        for key in ("kl_to_base", "win_rate", "win_rate_low", "win_rate_high", "win_rate_prompts", "win_rate_not_longer",
                    "win_rate_not_longer_prompts"):
            if key in after:
                out[key] = after[key]
        if "length_before" in out:
            longer = out["length_after"] > 1.2 * out["length_before"]
            gained = (out.get("reward_score_change") or 0) > 0
            no_short_wins = out.get("win_rate_not_longer") is None or out["win_rate_not_longer"] <= 0.5
            out["length_flagged"] = bool(longer and gained and no_short_wins)
        return out

    def record(self, before: dict, after: dict) -> list[dict[str, Any]]:
        """Every held-out prompt with the base's and the tuned model's answer (and scores), for checks.json."""
        rows = []
        for i, (p, b, a) in enumerate(zip(self.prompts, before.get("answer_rows", []), after.get("answer_rows", []))):
            row = {"prompt": p[-1]["content"], "base": b["text"], "tuned": a["text"]}
            if "scores" in before and "scores" in after:
                row.update(base_score=before["scores"][i], tuned_score=after["scores"][i])
            rows.append(row)
        return rows


def _row(a: Answer) -> dict[str, Any]:
    return {"ids": a.ids, "text": a.text, "truncated": a.truncated}
