"""Answer metrics against the official SQuAD v1.1 evaluation script (its functions, verbatim
below, are the reference) on hand-made cases."""

import re
import string
from collections import Counter

import pytest

from ragtune.evaluate.answers import abstained, best, contains, exact_match, f1, groundedness, normalize_answer


# --- official SQuAD v1.1 evaluate-v1.1.py (reference) -------------------------------------
def ref_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def ref_f1_score(prediction, ground_truth):
    prediction_tokens = ref_normalize_answer(prediction).split()
    ground_truth_tokens = ref_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def ref_exact_match_score(prediction, ground_truth):
    return ref_normalize_answer(prediction) == ref_normalize_answer(ground_truth)


def ref_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)
# -------------------------------------------------------------------------------------------

CASES = [
    ("The Broncos", ["Denver Broncos", "The Broncos", "Broncos"]),
    ("denver broncos!", ["Denver Broncos"]),
    ("It was the Denver Broncos, who won.", ["Denver Broncos"]),
    ("Santa Clara, California", ["Santa Clara, California", "Levi's Stadium"]),
    ("an apple a day", ["apple"]),
    ("1931", ["in 1931", "1931"]),
    ("", ["something"]),
    ("Cornelius   Vantreight", ["Cornelius Vantreight"]),
    ("the the the", ["the"]),
    ("Gold medal – 1st place", ["1st place"]),
]


@pytest.mark.parametrize("prediction, golds", CASES)
def test_matches_the_official_squad_script(prediction, golds):
    assert normalize_answer(prediction) == ref_normalize_answer(prediction)
    assert best(exact_match, prediction, golds) == float(ref_metric_max_over_ground_truths(ref_exact_match_score, prediction, golds))
    assert best(f1, prediction, golds) == pytest.approx(ref_metric_max_over_ground_truths(ref_f1_score, prediction, golds))


def test_contains_abstain_and_groundedness():
    assert contains("It was founded by Cornelius Vantreight in 1931.", "Cornelius Vantreight") == 1.0
    assert contains("Vantreighton", "Vantreight") == 0.0  # whole words only
    assert abstained("I don't know: nothing matches.") and not abstained("Room G-114.")
    assert groundedness("Room G-114 in the Halvorsen Building", "badges at room G-114 of the Halvorsen Building") == 1.0
    assert groundedness("Paris is lovely", "the badge office is in room G-114") == 0.0
    assert groundedness("the a an", "anything") is None
