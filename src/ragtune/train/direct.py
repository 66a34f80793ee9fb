"""Direct preference optimisation: DPO from pairs, KTO from liked/disliked answers.

Neither needs a reward model: the tuned model's log-probability of an answer, relative to the
reference (the base it started from), is the reward. With ``logratio = log p(answer) - log
p_ref(answer)`` summed over the answer's tokens and ``beta`` the strength of the pull back to the
reference:

- DPO (Rafailov et al. 2023): ``-log sigmoid(beta * (logratio_chosen - logratio_rejected))``,
  with ``label_smoothing`` e the conservative variant (cDPO) ``(1 - e) * that + e * (the reversed pair)``;
- KTO (Ethayarajh et al. 2024): a liked answer costs ``1 - sigmoid(beta * (logratio - z))``, a
  disliked one ``1 - sigmoid(beta * (z - logratio))``, weighted; ``z`` estimates the KL divergence
  from the reference, from answers paired with another row's prompt (each row's partner, the next
  row's answer, is fixed at encoding), averaged over the batch, clipped at 0 and computed without gradients, as TRL does.

The reference's log-probabilities never change, so they are computed once, before the first step,
by the model about to be trained (a fresh LoRA adapter changes nothing; a full fine-tune has not
moved yet): no second model in memory. ``reference_logprobs`` fills them in; the run keeps them in
its work folder, so a resumed run reads them back instead of needing the untouched model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ragtune.errors import DatasetError
from ragtune.train.preferences import Pair, Thumb
from ragtune.train.sft import IGNORE, Batch, Encoded, collate, sequence_logprobs, template_ids

LOSSES = ("dpo", "kto")


@dataclass
class EncodedChoice:
    """A pair for DPO: both conversations with their answer tokens labelled, and the reference's log-probs."""

    id: str
    chosen: Encoded
    rejected: Encoded
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def rows(self) -> list[Encoded]:
        return [self.chosen, self.rejected]


@dataclass
class EncodedAnswer:
    """A liked or disliked answer for KTO, and the row's KL partner: its prompt with another row's answer."""

    id: str
    answer: Encoded
    label: bool
    partner: Encoded
    ref: float | None = None
    ref_partner: float | None = None

    def rows(self) -> list[Encoded]:
        return [self.answer, self.partner]


def encode_answer(item_id: str, tokenizer, prompt: list[dict], answer: list[dict], max_length: int) -> Encoded:
    """The conversation ``prompt + answer`` with only the answer's tokens labelled (its end-of-turn included)."""
    ids = template_ids(tokenizer, prompt + answer, generation_prompt=False)
    start = len(template_ids(tokenizer, prompt, generation_prompt=True))
    if ids[:start] != template_ids(tokenizer, prompt, generation_prompt=True):
        raise DatasetError(f"preference {item_id}: the chat template does not render the prompt as a prefix of the "
                           "conversation; this model's template is not supported")
    if len(ids) > max_length:
        raise DatasetError(f"preference {item_id} has {len(ids)} tokens, more than max_length = {max_length}; raise "
                           "--max-length or shorten it (`ragtune data validate FILE --task dpo` lists them all)")
    return Encoded(item_id, ids, [IGNORE] * start + ids[start:])


def encode_choice(pair: Pair, tokenizer, max_length: int) -> EncodedChoice:
    return EncodedChoice(pair.id, encode_answer(pair.id, tokenizer, pair.prompt, pair.chosen, max_length),
                         encode_answer(pair.id, tokenizer, pair.prompt, pair.rejected, max_length))


def thumbs_of(items: list) -> list[Thumb]:
    """Likes/dislikes from pairs (the chosen answer liked, the rejected one disliked); thumbs as they are."""
    out = []
    for item in items:
        if isinstance(item, Pair):
            out += [Thumb(f"{item.id}+", item.prompt, item.chosen, True, item.metadata),
                    Thumb(f"{item.id}-", item.prompt, item.rejected, False, item.metadata)]
        else:
            out.append(item)
    return out


def encode_answers(thumbs: list[Thumb], tokenizer, max_length: int) -> tuple[list[EncodedAnswer], list[str]]:
    """Every thumb encoded with its KL partner: the next row's answer (after the last row, the first
    row's), put after this row's prompt; problems listed, not raised."""
    out, problems = [], []
    for i, t in enumerate(thumbs):
        other = thumbs[(i + 1) % len(thumbs)]
        try:
            out.append(EncodedAnswer(t.id, encode_answer(t.id, tokenizer, t.prompt, t.completion, max_length), t.label,
                                     encode_answer(t.id, tokenizer, t.prompt, other.completion, max_length)))
        except DatasetError as e:
            problems.append(str(e))
    return out, problems


# -- the reference ---------------------------------------------------------------------------------
def reference_logprobs(model, items: list, pad_id: int, batch_size: int) -> list[list[float]]:
    """Each item's rows' summed log-probabilities under ``model`` as it is now (no gradients), in
    item order; ``set_reference`` puts them into the items."""
    import torch

    from ragtune.train.sft import length_batches

    out: list[list[float]] = [[] for _ in items]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for idx in length_batches(items, batch_size, seed=0, epoch=0, length=lambda it: max(len(r.input_ids) for r in it.rows())):
            rows = [r for i in idx for r in items[i].rows()]
            logps = sequence_logprobs(model, collate(rows, pad_id)).tolist()
            width = len(items[idx[0]].rows())
            for n, i in enumerate(idx):
                out[i] = logps[n * width:(n + 1) * width]
    model.train(was_training)
    return out


def set_reference(items: list, values: list[list[float]]) -> None:
    for item, (a, b) in zip(items, values):
        if isinstance(item, EncodedChoice):
            item.ref_chosen, item.ref_rejected = a, b
        else:
            item.ref, item.ref_partner = a, b


# -- objectives for the training loop --------------------------------------------------------------
def _tensor(values, like):
    import torch

    return torch.tensor(values, dtype=like.dtype)


class DpoLoss:
    """DPO over pairs: chosen and rejected answers in one forward pass, against cached reference log-probs."""

    def __init__(self, pad_id: int, beta: float, label_smoothing: float = 0.0) -> None:
        self.pad_id, self.beta, self.label_smoothing = pad_id, beta, label_smoothing

    def length(self, item: EncodedChoice) -> int:
        return max(len(item.chosen.input_ids), len(item.rejected.input_ids))

    def __call__(self, model, items: list[EncodedChoice]) -> Batch:
        import torch.nn.functional as F

        batch = collate([p.chosen for p in items] + [p.rejected for p in items], self.pad_id)
        logps = sequence_logprobs(model, batch)
        n = len(items)
        ref = _tensor([p.ref_chosen for p in items] + [p.ref_rejected for p in items], logps)
        ratio = logps - ref
        logits = self.beta * (ratio[:n] - ratio[n:])
        loss = -(1 - self.label_smoothing) * F.logsigmoid(logits) - self.label_smoothing * F.logsigmoid(-logits)
        return Batch(loss.sum(), n, int(batch["attention_mask"].sum()), batch["input_ids"].numel())


class KtoLoss:
    """KTO over liked/disliked answers; the KL estimate comes from the same batch's partner rows."""

    def __init__(self, pad_id: int, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        self.pad_id, self.beta = pad_id, beta
        self.weights = (undesirable_weight, desirable_weight)

    def length(self, item: EncodedAnswer) -> int:
        return max(len(item.answer.input_ids), len(item.partner.input_ids))

    def __call__(self, model, items: list[EncodedAnswer]) -> Batch:
        import torch

        batch = collate([a.answer for a in items], self.pad_id)
        ratio = sequence_logprobs(model, batch) - _tensor([a.ref for a in items], batch["attention_mask"].float())
        partners = collate([a.partner for a in items], self.pad_id)
        with torch.no_grad():  # the KL estimate is a constant of the step: no graph for the partner rows
            kl = (sequence_logprobs(model, partners) - _tensor([a.ref_partner for a in items], ratio)).mean().clamp(min=0)
        liked = torch.tensor([a.label for a in items])
        losses = torch.where(liked, 1 - torch.sigmoid(self.beta * (ratio - kl)), 1 - torch.sigmoid(self.beta * (kl - ratio)))
        weights = _tensor([self.weights[a.label] for a in items], ratio)
        tokens = int(batch["attention_mask"].sum() + partners["attention_mask"].sum())
        return Batch((weights * losses).sum(), len(items), tokens, batch["input_ids"].numel() + partners["input_ids"].numel())


# -- evaluation ------------------------------------------------------------------------------------
def implicit_rewards(model, items: list, pad_id: int, beta: float, batch_size: int) -> list[list[float]]:
    """``beta * logratio`` of each item's answers (DPO: chosen, rejected; KTO: the answer) under ``model``."""
    now = reference_logprobs(model, items, pad_id, batch_size)
    out = []
    for item, values in zip(items, now):
        if isinstance(item, EncodedChoice):
            out.append([beta * (values[0] - item.ref_chosen), beta * (values[1] - item.ref_rejected)])
        else:
            out.append([beta * (values[0] - item.ref)])
    return out


def evaluate_direct(model, items: list, pad_id: int, beta: float, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """Held-out figures of a DPO/KTO model: for pairs, the share whose chosen answer gets the higher
    implicit reward (with its bootstrap interval), the mean implicit margin, and how often the
    *reference* already gave the chosen answer the higher log-probability (the accuracy before
    training, by log-probability); for likes/dislikes, the share whose implicit reward has the
    label's sign and the mean implicit reward of each."""
    from ragtune.train.reward import _win, bootstrap_interval

    if not items:
        return {}
    rewards = implicit_rewards(model, items, pad_id, beta, batch_size)
    if isinstance(items[0], EncodedChoice):
        right = [_win(c, r) for c, r in rewards]
        low, high = bootstrap_interval(right, seed)
        return {"held_out_pairs": len(items), "reward_accuracy": sum(right) / len(right), "reward_accuracy_low": low,
                "reward_accuracy_high": high, "reward_margin": sum(c - r for c, r in rewards) / len(rewards),
                "reference_logprob_accuracy": sum(_win(p.ref_chosen, p.ref_rejected) for p in items) / len(items)}
    liked = [r[0] for r, a in zip(rewards, items) if a.label]
    disliked = [r[0] for r, a in zip(rewards, items) if not a.label]
    right = [(r[0] > 0) == a.label for r, a in zip(rewards, items)]
    return {"held_out_thumbs": len(items), "reward_sign_accuracy": sum(right) / len(right),
            "reward_liked": sum(liked) / len(liked) if liked else None,
            "reward_disliked": sum(disliked) / len(disliked) if disliked else None}
