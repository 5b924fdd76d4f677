"""`grpo_fast --dry_run`: the published recipe (paper preset) checked against a simulated Ray cluster of its
shape (conftest.gpu_cluster: a head node without GPUs, 3 nodes of 8 GPUs at their own addresses), the launch
script's own flags, a scripted judge; and the problems it must report."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.judge_server import free_port
from open_instruct.scripted_judge import Reply, ScriptedJudge
from open_instruct.tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-policy"), seed=1)


def ok_judge(messages, n):
    return Reply("OK")


def dry_run(env_extra: dict, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(["bash", "scripts/train/grpo_flip.sh", "--dry_run", *flags], cwd=REPO,
                          env={**env, "PYTHON": sys.executable, **env_extra}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_paper_preset_plan_on_a_24_gpu_cluster(tmp_path, tiny_policy_dir, gpu_cluster):
    with ScriptedJudge(ok_judge) as judge:
        proc = dry_run({"PRESET": "paper", "MODEL_NAME_OR_PATH": str(tiny_policy_dir), "RAY_ADDRESS": gpu_cluster.address,
                        "DATASETS": "data/general_chat_flip_sample.jsonl 1.0", "JUDGE_BASE_URL": judge.api_base,
                        "JUDGE_MODEL": "hosted_vllm/scripted", "OUTPUT_DIR": str(tmp_path / "out")})  # fmt: skip
        assert judge.requests == 1, "the judge endpoint was checked with one call"
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "4 node(s), 52 CPUs, 24 GPUs" in out
    assert "8 DeepSpeed learner(s), ZeRO-3, 8 per node" in out and "16 vLLM engine(s) x TP 1, 1 GPU each" in out
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
    """A judge that is not there, and tensor parallelism on a cluster without GPUs."""
    proc = dry_run({"PRESET": "paper", "MODEL_NAME_OR_PATH": str(tiny_policy_dir),
                    "DATASETS": "data/general_chat_flip_sample.jsonl 1.0",
                    "JUDGE_BASE_URL": f"http://127.0.0.1:{free_port()}/v1", "JUDGE_MODEL": "hosted_vllm/absent",
                    "OUTPUT_DIR": str(tmp_path / "out")}, "--llm_judge_retries", "0", "--vllm_tensor_parallel_size", "2")  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    problems = [line for line in proc.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, proc.stdout
    assert "did not answer" in problems[0] and "has no GPU: --vllm_tensor_parallel_size 2 needs GPUs" in problems[1]
    assert "dry run: 2 problem(s)" in proc.stdout and "Traceback" not in proc.stderr


def test_bad_dataset_row_fails_before_anything_starts(tmp_path, tiny_policy_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}], "ground_truth": "x", "dataset": "general-flip"}\n'
                   '{"messages": "not a list", "ground_truth": "x", "dataset": "general-flip"}\n')  # fmt: skip
    proc = dry_run({"PRESET": "tiny", "MODEL_NAME_OR_PATH": str(tiny_policy_dir), "DATASETS": f"{bad} 1.0",
                    "JUDGE_BASE_URL": "http://127.0.0.1:9/v1", "JUDGE_MODEL": "hosted_vllm/j", "OUTPUT_DIR": str(tmp_path / "out")})  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad.jsonl" in last and "messages" in last and "Traceback" not in proc.stderr


def test_too_few_gpus_is_a_problem_not_a_hang(tmp_path, tiny_policy_dir, gpu_cluster):
    with ScriptedJudge(ok_judge) as judge:
        proc = dry_run({"PRESET": "paper", "MODEL_NAME_OR_PATH": str(tiny_policy_dir), "RAY_ADDRESS": gpu_cluster.address,
                        "DATASETS": "data/general_chat_flip_sample.jsonl 1.0", "JUDGE_BASE_URL": judge.api_base,
                        "JUDGE_MODEL": "hosted_vllm/scripted", "OUTPUT_DIR": str(tmp_path / "out")},
                       "--vllm_num_engines", "20")  # fmt: skip
    assert proc.returncode == 2
    assert "problem: the run needs 28 GPUs for 8 learner(s) and 20 engine(s) x TP 1, and the Ray cluster has 24" in proc.stdout
