"""Token-level F1 between an inferred instruction and the real one: the FLIP reward.

SQuAD-style: normalise both strings (lowercase, drop ASCII punctuation, drop the articles a/an/the,
fold whitespace), split on whitespace, count the multiset overlap. This is the only F1 in the tree.
"""

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, remove punctuation, remove articles, and collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> dict[str, float]:
    """Return {"f1", "precision", "recall"} as floats; all 0.0 when the token multisets share nothing."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    f1 = 2 * precision * recall / (precision + recall)
    return {"f1": f1, "precision": precision, "recall": recall}
