"""The TRL reward function: TRL's signature and both of its formats, the instruction from the last user turn
with earlier turns as context, None for a failed call; and a short GRPOTrainer run that logs it."""

import asyncio
import inspect
import json

import pytest

from open_instruct.f1 import f1_score
from open_instruct.integrations.trl import flip_reward
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge


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


@pytest.mark.slow
def test_a_grpo_trainer_run_logs_flip_and_leaves_failed_calls_out(tmp_path):
    """Through TRL itself: one GRPOTrainer step on the tiny model; the scripted judge infers the instruction
    exactly (F1 1.0) but answers every 4th request with a 500. Left out, the logged mean stays 1.0; scored as
    0 it would be 0.75."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from open_instruct.testing.tiny_models import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "policy", seed=1)

    def every_fourth_fails(messages, n):
        if n % 4 == 3:
            return Reply("down", status=500)
        return Reply(json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": "Write about cats."}))

    config = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        max_steps=1,
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=8,
        generation_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        use_vllm=False,
    )
    with ScriptedJudge(every_fourth_fails) as server:
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            reward_funcs=[flip_reward("hosted_vllm/scripted", api_base=server.api_base, retries=0)],
            args=config,
            train_dataset=Dataset.from_list([{"prompt": "Write about cats."}] * 8),
        )
        trainer.train()
        calls = len(server.received)
    logs = next(entry for entry in trainer.state.log_history if "rewards/flip/mean" in entry)
    assert calls == 8
    assert logs["rewards/flip/mean"] == pytest.approx(1.0)
