"""Answer metrics: SQuAD v1.1's official exact match and token F1 (same normalisation:
lower case, no punctuation, no articles, single spaces), answer-contains-gold for verbose
generative answers, abstention, and lexical groundedness."""

from __future__ import annotations

import re
from collections import Counter

from ragtune.text import content_words, normalize

ABSTAIN = re.compile(r"\b(i don'?t know|i do not know|cannot answer|can't answer|not (?:mentioned|provided) in)\b", re.I)


normalize_answer = normalize  # the official SQuAD normalisation (tested against its script)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains(prediction: str, gold: str) -> float:
    """1 when the normalised gold answer appears in the normalised prediction (whole words)."""
    g = normalize_answer(gold)
    return float(bool(g) and f" {g} " in f" {normalize_answer(prediction)} ")


def best(metric, prediction: str, golds: list[str]) -> float:
    """SQuAD scores a prediction against its best-matching gold answer."""
    return max((metric(prediction, g) for g in golds), default=0.0)


def abstained(prediction: str) -> bool:
    return bool(ABSTAIN.search(prediction))


def groundedness(prediction: str, context: str) -> float | None:
    """Lexical support: the share of the answer's content words (normalised, stop words out) that
    occur in the retrieved context. None for an answer without content words."""
    words = content_words(prediction)
    if not words:
        return None
    ctx = set(normalize_answer(context).split())
    return sum(w in ctx for w in words) / len(words)
