"""The word-share smoke-test verifier (open_instruct.testing.verifiers): registered on import, scored by hand."""

import asyncio

import pytest

from open_instruct.ground_truth_utils import VERIFIER_REGISTRY, build_verifier
from open_instruct.testing import verifiers  # noqa: F401


def share(response: str, word: str = "dogs") -> float:
    return asyncio.run(build_verifier("word-share").async_call([], response, word)).score


def test_registered_on_import():
    assert "word-share" in VERIFIER_REGISTRY


@pytest.mark.parametrize(
    ("response", "expected"), [("dogs", 1.0), ("Dogs and cats", 1 / 3), ("", 0.0), ("cats", 0.0)]
)
def test_share_of_words_equal_to_the_ground_truth(response, expected):
    assert share(response) == pytest.approx(expected)


def test_needs_a_ground_truth_word():
    with pytest.raises(ValueError, match="needs a ground-truth word"):
        share("dogs", word=" ")
