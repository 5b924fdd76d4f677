import importlib
import sys
from pathlib import Path

import pytest

from open_instruct.f1 import f1_score, normalize_answer


def test_normalize_lowercases_drops_punctuation_articles_and_folds_space():
    assert normalize_answer("  The Cat, an APPLE;  and a\tdog! ") == "cat apple and dog"


def test_articles_only_dropped_as_whole_words():
    assert normalize_answer("Theme another anathema") == "theme another anathema"


def test_f1_by_hand():
    # pred tokens: write short poem about cats (5); gold: write poem about dogs (4); common: write poem about (3)
    r = f1_score("Write a short poem about cats.", "Write a poem about dogs")
    assert r["precision"] == pytest.approx(3 / 5)
    assert r["recall"] == pytest.approx(3 / 4)
    assert r["f1"] == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))


def test_f1_counts_multiset_overlap():
    # "very" twice in prediction, once in gold: only one counts
    r = f1_score("very very good", "very good")
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "pred,gold", [("alpha", "beta"), ("", "beta"), ("alpha", ""), ("", ""), ("the", "a")]
)
def test_no_overlap_is_all_zero_floats(pred, gold):
    r = f1_score(pred, gold)
    assert r == {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert all(type(v) is float for v in r.values())


def test_identical_after_normalisation_is_one():
    assert f1_score("Explain: the TCP handshake!", "explain tcp handshake")["f1"] == 1.0


def test_root_shim_reexports_the_one_implementation():
    root = str(Path(__file__).resolve().parent.parent)
    sys.path.insert(0, root)
    try:
        shim = importlib.import_module("metrics")
    finally:
        sys.path.remove(root)
    assert shim.f1_score is f1_score
    assert shim.normalize_answer is normalize_answer
