"""Small text helpers shared by the chain (citation attribution) and evaluation (groundedness)."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
STOP_WORDS = frozenset(
    "a an the and or of to in on for with is are was were be been by at as it its this that from which who what when "
    "where how why has have had not no yes i you he she they we their there than then".split())


def normalize(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def content_words(s: str) -> list[str]:
    """Normalised words without stop words, in order (repeats kept)."""
    return [w for w in normalize(s).split() if w not in STOP_WORDS]
