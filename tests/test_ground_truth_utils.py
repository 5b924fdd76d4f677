"""Verifiers: the FLIP ground truth, the unparsed policies, judge failures, the registry."""

import asyncio
import json

import pytest

from open_instruct.f1 import f1_score
from open_instruct.ground_truth_utils import (
    VERIFIER_REGISTRY,
    LMJudgeVerifier,
    build_verifier,
    echo_overlap,
    split_conversation,
)
from open_instruct.judge_client import JudgeClient, JudgeConfig
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge


def flip_answer(instruction: str) -> Reply:
    return Reply(json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": instruction}))


def make_client(judge: ScriptedJudge, **kw) -> JudgeClient:
    return JudgeClient(JudgeConfig("hosted_vllm/scripted", api_base=judge.api_base, backoff_base=0.01, **kw))


def run(verifier, messages, response, ground_truth=None):
    return asyncio.run(verifier.async_call(messages, response, ground_truth))


def test_flip_reward_is_f1_against_the_full_multiline_last_user_message():
    last_user = "Suggest a three-day itinerary for Kyoto.\nKeep it budget friendly.\nUse bullet points."
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "I am going to Japan."},
        {"role": "assistant", "content": "How can I help?"},
        {"role": "user", "content": last_user},
    ]
    inferred = "Suggest a budget friendly Kyoto itinerary for three days."
    with ScriptedJudge(lambda m, n: flip_answer(inferred)) as judge:
        result = run(build_verifier("general-flip", make_client(judge)), messages, "Day 1: ...")
        sent = judge.received[0][1]["content"]
    expected = f1_score(inferred, last_user)
    assert result.score == pytest.approx(expected["f1"])
    assert result.details == pytest.approx({"precision": expected["precision"], "recall": expected["recall"]})
    # the second and third lines matter: the published code kept only the first line
    assert expected["recall"] < f1_score(inferred, last_user.splitlines()[0])["recall"]
    assert result.judge_ok and result.parsed and result.extracted == inferred
    # earlier turns reach the judge as context; the hidden instruction and the system prompt do not
    assert "user: I am going to Japan." in sent and "assistant: How can I help?" in sent
    assert "Kyoto" not in sent and "You are helpful." not in sent


def test_flip_without_messages_uses_ground_truth_string():
    with ScriptedJudge(lambda m, n: flip_answer("Write a haiku about rain")) as judge:
        result = run(
            build_verifier("general-flip", make_client(judge)), None, "rain falls", "Write a haiku about rain"
        )
    assert result.score == 1.0


def test_unparsed_raw_policy_scores_the_raw_text():
    raw = "I think the user asked for a haiku about rain"
    with ScriptedJudge(lambda m, n: Reply(raw)) as judge:
        result = run(
            build_verifier("general-flip", make_client(judge)), None, "r", "Write a haiku about rain"
        )
    assert result.judge_ok and not result.parsed and result.extracted is None
    assert result.score == pytest.approx(f1_score(raw, "Write a haiku about rain")["f1"]) and result.score > 0
    assert "raw text" in result.error


def test_unparsed_answer_that_repeats_the_instruction_is_not_rewarded():
    """A response that makes the judge write the instruction back, unparsed, would get F1 1.0 under `raw`."""
    raw = "Sure. The instruction was: Write a haiku about rain."
    with ScriptedJudge(lambda m, n: Reply(raw)) as judge:
        result = run(
            build_verifier("general-flip", make_client(judge)), None, "r", "Write a haiku about rain"
        )
    assert result.score == 0.0 and not result.parsed and "repeats the instruction" in result.error


@pytest.mark.parametrize(
    ("response", "flagged"),
    [
        ("Write a haiku about rain.", True),  # the instruction itself
        ("Here you go: write a haiku about the rain! Drops on the roof.", True),
        ("Drops on the roof / rain whispers a haiku / grey sky hums", False),  # no word pair of it
    ],
)
def test_a_response_that_restates_the_instruction_gets_zero_without_a_judge_call(response, flagged):
    with ScriptedJudge(lambda m, n: flip_answer("Write a haiku about rain")) as judge:
        result = run(
            build_verifier("general-flip", make_client(judge)), None, response, "Write a haiku about rain"
        )
        calls = len(judge.received)
    assert (result.score == 0.0 and calls == 0 and "restates the instruction" in result.error) == flagged
    if flagged:
        assert result.details["echo_overlap"] >= 0.6
    else:
        assert result.score == 1.0 and calls == 1
    # the guard can be relaxed: above 1 it never fires
    with ScriptedJudge(lambda m, n: flip_answer("Write a haiku about rain")) as judge:
        verifier = build_verifier("general-flip", make_client(judge), echo_overlap_max=1.01)
        assert run(verifier, None, response, "Write a haiku about rain").score == 1.0


def test_an_empty_response_gets_zero_without_a_judge_call():
    with ScriptedJudge(lambda m, n: flip_answer("Write a haiku about rain")) as judge:
        result = run(
            build_verifier("general-flip", make_client(judge)), None, "  \n", "Write a haiku about rain"
        )
        assert result.score == 0.0 and result.error == "empty response" and not judge.received


def test_echo_overlap_counts_word_pairs_after_normalisation():
    assert echo_overlap("THE cat sat, on a mat", "cat sat on mat") == 1.0
    assert echo_overlap("cat sat", "cat sat on mat") == pytest.approx(1 / 3)
    assert echo_overlap("I like cats", "cats") == 1.0 and echo_overlap("dogs", "cats") == 0.0
    assert echo_overlap("anything", "") == 0.0


def test_unparsed_fail_policy_gives_no_reward():
    with ScriptedJudge(lambda m, n: Reply("no json")) as judge:
        verifier = build_verifier("general-flip", make_client(judge), on_unparsed="fail")
        result = run(verifier, None, "r", "Write a haiku")
    assert result.judge_ok and not result.parsed and result.score is None


@pytest.mark.parametrize(
    "reply",
    [
        Reply("<think>\nThe response lists three cities, so the user probably asked", finish_reason="length"),
        Reply(
            "", reasoning="The response lists three cities, so", finish_reason="length"
        ),  # reasoning parser
    ],
)
@pytest.mark.parametrize("name", ["general-flip", "general-quality"])
def test_an_answer_cut_off_inside_its_reasoning_is_unparsed_and_not_rewarded(reply, name):
    """Failed before: under `raw` FLIP scored F1 against the judge's unfinished thinking (and the quality
    judge gave 0.0); there is no answer to score, so no reward, whatever the unparsed policy."""
    messages = [{"role": "user", "content": "Name three cities in Japan."}]
    with ScriptedJudge(lambda m, n: reply) as judge:
        result = run(build_verifier(name, make_client(judge)), messages, "Tokyo, Kyoto, Osaka")
    assert result.judge_ok and not result.parsed and result.score is None
    assert result.error.startswith("judge answer cut off inside its reasoning") and result.judge_output


def test_an_answer_after_the_reasoning_parser_s_reasoning_is_read():
    reply = Reply(json.dumps({"INFERRED INSTRUCTION": "Name three cities in Japan."}), reasoning="Cities.")
    with ScriptedJudge(lambda m, n: reply) as judge:
        result = run(
            build_verifier("general-flip", make_client(judge)), None, "Tokyo", "Name three cities in Japan."
        )
    assert result.parsed and result.score == 1.0 and result.judge_output.startswith("<think>Cities.</think>")


def test_judge_failure_is_no_reward_never_zero():
    with ScriptedJudge(lambda m, n: Reply("down", status=500)) as judge:
        result = run(
            build_verifier("general-flip", make_client(judge, retries=1)), None, "r", "Write a haiku"
        )
    assert result.score is None and not result.judge_ok and "failed after 2 attempt(s)" in result.error


@pytest.mark.parametrize(
    "answer,score,parsed",
    [
        ('{"SCORE": 7}', 0.7, True),
        ('{"SCORE": "10/10"}', 1.0, True),
        ('{"SCORE": 42}', 0.0, False),
        ("no score", 0.0, False),
    ],
)
def test_quality_verifier_scales_score_to_unit_interval(answer, score, parsed):
    messages = [{"role": "user", "content": "Write a haiku"}]
    with ScriptedJudge(lambda m, n: Reply(answer)) as judge:
        result = run(build_verifier("general-quality", make_client(judge)), messages, "rain falls")
        sent = judge.received[0][1]["content"]
    assert result.score == pytest.approx(score) and result.parsed is parsed
    assert "Write a haiku" in sent and "rain falls" in sent


def test_quality_ref_sends_the_reference():
    messages = [{"role": "user", "content": "2+2?"}]
    with ScriptedJudge(lambda m, n: Reply('{"SCORE": 9}')) as judge:
        result = run(
            build_verifier("general-quality_ref", make_client(judge)), messages, "4", "The answer is 4."
        )
        sent = judge.received[0][1]["content"]
    assert result.score == pytest.approx(0.9) and "The answer is 4." in sent


def test_registry_names_and_errors():
    assert {"general-flip", "general-quality", "general-quality_ref"} <= set(VERIFIER_REGISTRY)
    with pytest.raises(KeyError, match="unknown verifier 'general-nope'; known: .*general-flip"):
        build_verifier("general-nope")
    with pytest.raises(ValueError, match="needs a judge model"):
        build_verifier("general-flip")
    with pytest.raises(ValueError):
        LMJudgeVerifier("pairwise", client=None)  # type: ignore[arg-type]


def test_split_conversation():
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c\nd"},
    ]
    assert split_conversation(msgs) == (msgs[:2], "c\nd")
    with pytest.raises(ValueError):
        split_conversation([{"role": "assistant", "content": "x"}])
