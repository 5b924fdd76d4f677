"""The verl reward function, called the way verl's reward managers call a custom_reward_function (verl itself
is not installed here): compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)
and the batched variant; the instruction from ground_truth or extra_info; a failed call's explicit fallback."""

import pytest

from open_instruct.f1 import f1_score
from open_instruct.integrations import verl


def test_compute_score_and_the_batch_variant(first_word_server):
    kwargs = {"judge_model": "hosted_vllm/scripted", "api_base": first_word_server.api_base, "retries": 0}
    one = verl.compute_score("world", "cats purr", "Write about cats.", None, **kwargs)
    batch = verl.compute_score_batch(
        ["world"] * 3,
        ["dogs bark", "FAIL", "fish swim"],
        [None, "Write about birds.", "ignored when extra_info names it"],
        [
            {"instruction": "Write about dogs please.", "context": [{"role": "user", "content": "Hi"}]},
            None,
            {"instruction": "Write about fish."},
        ],
        score_on_failure=-1.0,
        **kwargs,
    )
    assert one["score"] == pytest.approx(1.0) and one["judge_ok"] and one["parsed"]
    assert batch[0]["score"] == pytest.approx(f1_score("Write about dogs", "Write about dogs please.")["f1"])
    assert batch[1] == {"score": -1.0, "judge_ok": False, "parsed": False, "precision": 0.0, "recall": 0.0}
    assert batch[2]["score"] == pytest.approx(1.0)


def test_missing_instruction_or_judge_is_a_clear_error():
    with pytest.raises(ValueError, match="judge_model"):
        verl.compute_score("d", "text", "Write.", None)
    with pytest.raises(ValueError, match="needs the instruction"):
        verl.compute_score(
            "d", "text", None, None, judge_model="hosted_vllm/j", api_base="http://127.0.0.1:1/v1"
        )
