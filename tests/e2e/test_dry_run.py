"""`grpo_fast --dry_run`: the published recipe (paper preset) checked against a simulated Ray cluster of its
shape (conftest.gpu_cluster: a head node without GPUs, 3 nodes of 8 GPUs at their own addresses), the launch
script's own flags, a scripted judge; and the problems it must report."""

import os
import re
import subprocess
import sys
from pathlib import Path

from open_instruct.net_utils import free_port
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge

REPO = Path(__file__).resolve().parents[2]


def ok_judge(messages, n):
    return Reply("OK")


def dry_run(env_extra: dict, *flags: str) -> subprocess.CompletedProcess:
    return launch(env_extra, "--dry_run", *flags)


def launch(env_extra: dict, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        ["bash", "scripts/train/grpo_flip.sh", *flags],
        cwd=REPO,
        env={**env, "PYTHON": sys.executable, **env_extra},
        capture_output=True,
        text=True,
        timeout=300,
    )


def paper_on_gpus(tmp_path: Path, policy: Path, gpu_cluster, judge: ScriptedJudge) -> dict:
    """The launch script's environment for the paper preset on the simulated 24-GPU cluster."""
    return {
        "PRESET": "paper",
        "MODEL_NAME_OR_PATH": str(policy),
        "RAY_ADDRESS": gpu_cluster.address,
        "DATASETS": "data/general_chat_flip_sample.jsonl 1.0",
        "JUDGE_BASE_URL": judge.api_base,
        "JUDGE_MODEL": "hosted_vllm/scripted",
        "OUTPUT_DIR": str(tmp_path / "out"),
    }


def test_paper_preset_plan_on_a_24_gpu_cluster(tmp_path, tiny_policy_dir, gpu_cluster):
    with ScriptedJudge(ok_judge) as judge:
        proc = dry_run(paper_on_gpus(tmp_path, tiny_policy_dir, gpu_cluster, judge))
        assert judge.requests == 1, "the judge endpoint was checked with one call"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "4 node(s), 52 CPUs, 24 GPUs" in out
    assert (
        "8 DeepSpeed learner(s), ZeRO-3, 8 per node" in out and "16 vLLM engine(s) x TP 1, 1 GPU each" in out
    )
    # as Ray placed them: the 8 learners on one GPU node with the rendezvous, 8 engines on each other node
    placed = dict(re.findall(r"^    (127\.0\.0\.\d+): (.*)$", out, re.M))
    learner_node = next(ip for ip, what in placed.items() if "learner" in what)
    assert placed[learner_node] == "learner rank(s) 0-7 (rendezvous: rank 0)"
    assert sorted(placed.values())[:2] == ["engine(s) 0-7", "engine(s) 8-15"] and len(placed) == 3
    assert "24 prompts x 8 samples = 192 samples; 24 per learner" in out
    assert f"{10_000_000 // 192} steps (10000000 episodes), async_steps 1, state every 50" in out
    assert "memory per learner GPU (rough)" in out and "(answered)" in out
    assert "dry run: ok, nothing was trained" in out
    # nothing was loaded or written: no model, no metrics, no actors
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_problems_are_listed_and_exit_2(tmp_path, tiny_policy_dir):
    """A bad dataset row, a judge that is not there, the paper's 24 actors on this machine's local cluster,
    and tensor parallelism without GPUs: one problem line each. Failed before: the local cluster was sized to
    whatever the run asked for, so 16 engines and 8 learners fitted a 2-core machine."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}], "ground_truth": "x", "dataset": "general-flip"}\n'
        '{"messages": "not a list", "ground_truth": "x", "dataset": "general-flip"}\n'
    )
    proc = dry_run(
        {
            "PRESET": "paper",
            "MODEL_NAME_OR_PATH": str(tiny_policy_dir),
            "DATASETS": f"{bad} 1.0",
            "JUDGE_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
            "JUDGE_MODEL": "hosted_vllm/absent",
            "OUTPUT_DIR": str(tmp_path / "out"),
        },
        "--llm_judge_retries",
        "0",
        "--vllm_tensor_parallel_size",
        "2",
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    problems = [line for line in proc.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, proc.stdout
    assert "--dataset_mixer_list" in problems[0] and "bad.jsonl" in problems[0] and "messages" in problems[0]
    assert "did not answer" in problems[1]
    cores = len(os.sched_getaffinity(0))
    assert problems[2].startswith(
        f"problem: the run needs 24 CPUs for 8 learner(s) and 16 engine(s) x TP 2, and the "
        f"Ray cluster has {cores} (a local Ray cluster on this machine)"
    )
    assert "has no GPU: --vllm_tensor_parallel_size 2 needs GPUs" in problems[3]
    assert "dry run: 4 problem(s)" in proc.stdout and "Traceback" not in proc.stderr


def offline_env(**extra) -> dict:
    """No hub (as here and in CI, but failing at once instead of after retries), no Ray cluster, no judge."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "HOSTED_VLLM_API_BASE")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def test_the_published_command_line_dry_run_lists_every_problem():
    """The published grpo_flip.sh's trainer flags verbatim (tests/test_grpo_config.py): they pass the flag
    check, the AI2-only ones are named once as not used, and the dry run names every problem on its own
    line: the model and both datasets (the hub is out of reach), the judge without an address, and the
    recipe's 24 actors on this machine. Failed before: it stopped at `unknown flag(s): --eval_on_step_0`,
    and the dry run stopped at its first problem."""
    import shlex

    from test_grpo_config import PUBLISHED

    proc = subprocess.run(
        [sys.executable, "-m", "open_instruct.grpo_fast", *shlex.split(PUBLISHED), "--dry_run"],
        cwd=REPO,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout.count("note: not used on this stack") == 1
    problems = [
        line.removeprefix("problem: ") for line in proc.stdout.splitlines() if line.startswith("problem: ")
    ]
    expected = [
        "--model_name_or_path allenai/Olmo-3-7B-Think-DPO: cannot read its tokenizer",
        "--dataset_mixer_list: yikeee/rlvr_general_chat_flip: could not load",
        "--dataset_mixer_eval_list: yikeee/rlvr_general_chat_flip: could not load",
        "--llm_judge_model hosted_vllm/Qwen/Qwen3-4B: no address for the judge",
        "the run needs 24 CPUs for 8 learner(s) and 16 engine(s) x TP 1",
    ]
    assert len(problems) == len(expected), proc.stdout
    for line, start in zip(problems, expected, strict=True):
        assert line.startswith(start), (line, start)
    assert f"dry run: {len(expected)} problem(s)" in proc.stdout
    # --oe_eval_tasks is used, not ignored: where the evaluations would run (this machine has no GPU)
    assert "evaluation ifeval::hamish_zs_reasoning_deepseek,bbh:cot::" in proc.stdout
    assert (
        "and step 0: python -m open_instruct.evaluate in the background, one at a time, as a Ray task on CPU"
        in proc.stdout
    )


def test_single_gpu_preset_dry_run_starts_no_judge(tmp_path):
    """Failed before: PRESET=single_gpu --dry_run served the preset's judge with vLLM first (offline it ended
    "the judge server did not start", exit 1). Now it says what it would serve and checks the rest."""
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "scripts/train/grpo_flip.sh", "--dry_run"],
        cwd=REPO,
        env=offline_env(PYTHON=sys.executable, PRESET="single_gpu", OUTPUT_DIR=str(out)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "would serve judge Qwen/Qwen3-0.6B on port 8000 (not started)" in proc.stdout
    assert (
        "judge      hosted_vllm/judge at http://127.0.0.1:8000/v1: not started (dry run); the launch script would "
        "serve Qwen/Qwen3-0.6B there"
    ) in proc.stdout
    assert not (out / "judge_server.out").exists() and "did not start" not in proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("problem: ")]
    assert [p.split(":")[1].strip() for p in problems] == [
        "--model_name_or_path Qwen/Qwen3-1.7B",
        "--dataset_mixer_list",
    ]


def test_a_run_whose_plan_leaves_no_gpu_for_the_evaluations_stops_before_training(
    tmp_path, tiny_policy_dir, gpu_cluster
):
    """The published layout fills the 24 GPUs; with --oe_eval_tasks the run itself (not only the dry run)
    stops with one line before loading anything. Failed before: it trained, and every evaluation waited
    for a GPU that never came free."""
    with ScriptedJudge(ok_judge) as judge:
        proc = launch(
            paper_on_gpus(tmp_path, tiny_policy_dir, gpu_cluster, judge),
            "--oe_eval_tasks",
            "ifeval",
        )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --oe_eval_tasks: the learners and engines take 24 of the 24 GPUs, leaving none")
    ), proc.stderr[-3000:]
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_too_few_gpus_is_a_problem_not_a_hang(tmp_path, tiny_policy_dir, gpu_cluster):
    with ScriptedJudge(ok_judge) as judge:
        proc = dry_run(
            paper_on_gpus(tmp_path, tiny_policy_dir, gpu_cluster, judge),
            "--vllm_num_engines",
            "20",
            "--oe_eval_tasks",
            "ifeval",
        )
    assert proc.returncode == 2
    # the downstream evaluations need a GPU of their own, and the plan leaves none
    assert (
        "problem: --oe_eval_tasks: the learners and engines take 28 of the 24 GPUs, leaving none"
        in proc.stdout
    )
    assert "evaluation ifeval on every saved checkpoint and the final model" in proc.stdout
    assert (
        "problem: the run needs 28 GPUs for 8 learner(s) and 20 engine(s) x TP 1, and the Ray cluster has 24"
        in proc.stdout
    )
