"""The TRL reward function: TRL's signature and both of its formats, the instruction from the last user turn
with earlier turns as context, None for a failed call. A GRPOTrainer run that logs it is in
tests/e2e/test_trl_trainer.py."""

import asyncio
import inspect

import pytest

from open_instruct.f1 import f1_score
from open_instruct.integrations.trl import flip_reward


def test_plain_and_conversational_formats_and_a_failed_call(first_word_server):
    flip = flip_reward("hosted_vllm/scripted", api_base=first_word_server.api_base, retries=0)
    assert flip.__name__ == "flip" and inspect.iscoroutinefunction(flip)
    plain = asyncio.run(flip(prompts=["Write about cats."], completions=["cats purr"], completion_ids=[[1]]))
    chat_prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I own a dog."},
        {"role": "assistant", "content": "Lovely."},
        {"role": "user", "content": "Write about dogs, briefly."},
    ]
    logged = {}
    conversational = asyncio.run(
        flip(
            prompts=[chat_prompt, chat_prompt],
            completions=[
                [{"role": "assistant", "content": "dogs bark"}],
                [{"role": "assistant", "content": "FAIL"}],
            ],
            completion_ids=[[1], [2]],
            log_metric=lambda name, value: logged.__setitem__(name, value),
            trainer_state=None,
        )
    )
    sent = (
        first_word_server.received[-1][1]["content"]
        if "FAIL" not in first_word_server.received[-1][1]["content"]
        else first_word_server.received[-2][1]["content"]
    )
    assert plain == [pytest.approx(1.0)]
    assert conversational[0] == pytest.approx(
        f1_score("Write about dogs", "Write about dogs, briefly.")["f1"]
    )
    assert conversational[1] is None  # TRL leaves it out of the group statistics
    assert "user: I own a dog." in sent and "Be brief" not in sent
    assert logged == {"flip/judge_failures": 0.5, "flip/unparsed": 0.0}
