"""The reward role: what the verifier reads of a response (final_answer), and the dispatcher that picks the
verifier a row names, applies the non-stop penalty and reuses each verifier."""

import asyncio

import pytest

from open_instruct.ground_truth_utils import Verifier, VerifierResult
from open_instruct.rewards import RewardConfig, RewardDispatcher, final_answer
from open_instruct.testing import verifiers  # noqa: F401  (registers word-share)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("just an answer", "just an answer"),
        ("<think>plan it</think> The poem.", "The poem."),
        ("reasoning the template opened</think>\nThe poem.", "The poem."),  # olmo_thinker opens <think>
        ("<think>never closed, so nothing is the answer", ""),
        ("<think>a</think><answer>first</answer> and <answer>last</answer>", "last"),
        ("<think>restating the prompt: write a poem</think><answer>roses</answer>", "roses"),
        ("<answer>cut off before the close", "cut off before the close"),
        ("<answer></answer>", ""),  # an empty answer is what the policy gave, not the whole text
        ("<ANSWER>case</ANSWER>", "case"),
    ],
)
def test_final_answer_is_what_the_verifier_reads(text, expected):
    assert final_answer(text) == expected


def score(dispatcher, text: str, finish_reason: str = "stop", ground_truth="dogs", name="word-share"):
    return asyncio.run(
        dispatcher.score(name, [{"role": "user", "content": "hi"}], ground_truth, text, finish_reason)
    )


def test_dispatcher_scores_the_final_answer_with_the_rows_verifier():
    rewards = RewardDispatcher(RewardConfig(), judge=None)
    assert score(rewards, "<think>cats cats</think>dogs dogs cats").score == pytest.approx(2 / 3)
    assert score(rewards, "dogs", ground_truth=["dogs", "ignored"]).score == 1.0  # a list: its first entry


def test_non_stop_penalty_replaces_the_reward_of_a_truncated_response():
    rewards = RewardDispatcher(RewardConfig(non_stop_penalty=True, non_stop_penalty_value=-0.5), judge=None)
    cut = score(rewards, "dogs dogs", finish_reason="length")
    assert cut.score == -0.5 and "non-stop penalty" in cut.error
    assert score(rewards, "dogs dogs").score == 1.0
    assert score(RewardDispatcher(RewardConfig(), None), "dogs", finish_reason="length").score == 1.0  # off


def test_each_verifier_is_built_once():
    rewards = RewardDispatcher(RewardConfig(), judge=None)
    assert rewards.verifier("word-share") is rewards.verifier("word-share")
    assert isinstance(rewards.verifier("word-share"), Verifier)


def test_unknown_verifier_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown verifier 'no-such'; known: .*word-share"):
        RewardDispatcher(RewardConfig(), judge=None).verifier("no-such")


def test_a_judge_verifier_without_a_judge_is_refused():
    with pytest.raises(ValueError, match="needs a judge model"):
        RewardDispatcher(RewardConfig(), judge=None).verifier("general-flip")


def test_result_type():
    assert isinstance(score(RewardDispatcher(RewardConfig(), None), "dogs"), VerifierResult)
