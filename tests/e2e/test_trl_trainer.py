"""FLIP's TRL reward function through TRL itself: a short GRPOTrainer run that logs it and leaves failed calls
out (the function's own contract is tested in tests/integrations/test_trl.py)."""

import json

import pytest

from open_instruct.integrations.trl import flip_reward
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge


def test_a_grpo_trainer_run_logs_flip_and_leaves_failed_calls_out(tiny_policy_dir, tmp_path):
    """Through TRL itself: one GRPOTrainer step on the tiny model; the scripted judge infers the instruction
    exactly (F1 1.0) but answers every 4th request with a 500. Left out, the logged mean stays 1.0; scored as
    0 it would be 0.75."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    model_dir = tiny_policy_dir

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
