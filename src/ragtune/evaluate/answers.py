"""Answer metrics: SQuAD v1.1's official exact match and token F1 (same normalisation:
lower case, no punctuation, no articles, single spaces), answer-contains-gold for verbose
generative answers, abstention, and lexical groundedness."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
ABSTAIN = re.compile(r"\b(i don'?t know|i do not know|cannot answer|can't answer|not (?:mentioned|provided) in)\b", re.I)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


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


_STOP = frozenset("a an the and or of to in on for with is are was were be been by at as it its this that from which "
                  "who what when where how why has have had not no yes i you he she they we their there than then".split())


def groundedness(prediction: str, context: str) -> float | None:
    """Lexical support: the share of the answer's content words (normalised, stop words out) that
    occur in the retrieved context. None for an answer without content words."""
    words = [w for w in normalize_answer(prediction).split() if w not in _STOP]
    if not words:
        return None
    ctx = set(normalize_answer(context).split())
    return sum(w in ctx for w in words) / len(words)
