"""FlipReward, the Python API: rewards are the verifier's F1, a failed judge call is None (never 0.0), earlier
turns reach the judge, it runs from sync code, from async code and inside a running loop, and bad settings fail
at once."""

import asyncio
import json

import pytest

from open_instruct.f1 import f1_score
from open_instruct.flip import FlipReward
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, response_of


def judge(messages, n):
    if "FAIL" in response_of(messages):
        return Reply("down", status=500)
    return Reply(
        json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": "Write about " + response_of(messages)})
    )


def flip_for(server, **kw) -> FlipReward:
    return FlipReward("hosted_vllm/scripted", api_base=server.api_base, retries=0, **kw)


def test_rewards_are_f1_and_a_failed_call_is_none():
    with ScriptedJudge(judge) as server:
        results = flip_for(server).score(
            ["Write about cats.", "Write about dogs please.", "Write about fish."], ["cats", "dogs", "FAIL"]
        )
    assert results[0].reward == pytest.approx(1.0) and results[0].inferred_instruction == "Write about cats"
    expected = f1_score("Write about dogs", "Write about dogs please.")
    assert (results[1].reward, results[1].precision, results[1].recall) == pytest.approx(
        (expected["f1"], expected["precision"], expected["recall"])
    )
    failed = results[2]
    assert failed.reward is None and not failed.judge_ok and failed.error and failed.judge_output is None
    assert all(r.parsed and r.judge_ok for r in results[:2])


def test_contexts_reach_the_judge_and_ascore_works_from_async_code():
    with ScriptedJudge(judge) as server:
        flip = flip_for(server)
        context = [{"role": "user", "content": "I have a cat."}, {"role": "assistant", "content": "Nice!"}]
        results = asyncio.run(flip.ascore(["Write about cats."], ["cats"], [context]))
        sent = server.received[0][1]["content"]
    assert results[0].reward == pytest.approx(1.0)
    assert "user: I have a cat." in sent and "assistant: Nice!" in sent


def test_score_works_inside_a_running_event_loop():
    async def notebook_cell():
        return flip.score(["Write about cats."], ["cats"])  # sync call while a loop runs, as in Jupyter

    with ScriptedJudge(judge) as server:
        flip = flip_for(server)
        assert asyncio.run(notebook_cell())[0].reward == pytest.approx(1.0)
        assert flip.score(["Write about dogs."], ["dogs"])[0].reward == pytest.approx(1.0)  # and again


def test_the_guards_apply():
    with ScriptedJudge(judge) as server:
        results = flip_for(server).score(["Write about cats."], ["Write about cats."])
        assert not server.received
    assert results[0].reward == 0.0 and "restates the instruction" in results[0].error


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("Qwen/Qwen3-4B", "http://127.0.0.1:1/v1"), {}, "not a litellm id"),
        (("hosted_vllm/judge",), {}, "no address for the judge: set api_base"),
        (
            ("hosted_vllm/judge", "http://127.0.0.1:1/v1"),
            {"timout": 3},
            "unknown judge setting(s) ['timout']",
        ),
    ],
)
def test_bad_settings_fail_before_any_call(args, kwargs, message, monkeypatch):
    monkeypatch.delenv("HOSTED_VLLM_API_BASE", raising=False)
    with pytest.raises(ValueError) as err:
        FlipReward(*args, **kwargs)
    assert message in str(err.value)


def test_lengths_must_match():
    flip = FlipReward("hosted_vllm/judge", "http://127.0.0.1:1/v1")
    with pytest.raises(ValueError, match="same length"):
        flip.score(["a", "b"], ["x"])
