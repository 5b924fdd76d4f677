"""Cluster launch: the variables and their checks, the Beaker spec and the judge's listen address. The Slurm
scripts and Beaker replicas run end to end in tests/e2e/test_cluster_launch_scripts.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from open_instruct import judge_server
from open_instruct.judge_server import JudgeServer

REPO = Path(__file__).resolve().parent.parent
CLUSTER_ENV = REPO / "scripts/cluster/cluster_env.sh"
MAKE_SPEC = REPO / "scripts/beaker/make_spec.py"
SCRIPTS = [
    *sorted((REPO / "scripts/cluster").glob("*.sh")),
    *sorted((REPO / "scripts/slurm").iterdir()),
    REPO / "scripts/serve_judge.sh",
    REPO / "scripts/train/grpo_common.sh",
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def layout(**env) -> dict[str, str]:
    """The cluster variables and the values derived from them, for these overrides."""
    names = "NUM_NODES RAY_GPUS HEAD_RAY_GPUS JUDGE_HEAD_GPUS JUDGE_REPLICAS"
    show = f"source {CLUSTER_ENV} && for n in {names}; do echo $n=${{!n}}; done"
    out = subprocess.run(["bash", "-c", show], env={**os.environ, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def test_layouts():
    # The published recipe: 3 training nodes of 8 GPUs and a node for the judge, 8 copies of it there.
    assert layout() == {
        "NUM_NODES": "4",
        "RAY_GPUS": "24",
        "HEAD_RAY_GPUS": "0",
        "JUDGE_HEAD_GPUS": "8",
        "JUDGE_REPLICAS": "8",
    }
    # The judge on 2 of the head node's GPUs (tensor parallel 2): the head gives Ray the other 6.
    assert layout(TRAIN_NODES="2", JUDGE_NODES="0", JUDGE_GPUS="2") == {
        "NUM_NODES": "2",
        "RAY_GPUS": "14",
        "HEAD_RAY_GPUS": "6",
        "JUDGE_HEAD_GPUS": "2",
        "JUDGE_REPLICAS": "1",
    }
    # Two judge nodes (the head and one more), 8 copies of the judge on each; the 3 training nodes go to Ray.
    assert layout(JUDGE_NODES="2") == {
        "NUM_NODES": "5",
        "RAY_GPUS": "24",
        "HEAD_RAY_GPUS": "0",
        "JUDGE_HEAD_GPUS": "8",
        "JUDGE_REPLICAS": "8",
    }
    # CPU only: no GPU anywhere, the judge on the head node's CPUs.
    assert layout(TRAIN_NODES="1", JUDGE_NODES="0", GPUS_PER_NODE="0")["RAY_GPUS"] == "0"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TRAIN_NODES": "0"}, "TRAIN_NODES must be at least 1"),
        ({"TRAIN_NODES": "three"}, "TRAIN_NODES must be a whole number"),
        ({"JUDGE_NODES": "two"}, "JUDGE_NODES must be a whole number"),
        ({"RAY_PORT": "8003"}, "RAY_PORT 8003 is one of the judge's ports (JUDGE_PORT to"),
        ({"JUDGE_NODES": "0", "JUDGE_GPUS": "8"}, "leaves none to train"),
        ({"JUDGE_GPUS": "3", "JUDGE_REPLICAS": "3"}, "needs JUDGE_GPUS x JUDGE_REPLICAS = 9 GPUs"),
        ({"RAY_PORT": "8000"}, "two different ports"),
        ({"DRY_RUN": "yes"}, "DRY_RUN must be 0, 1 or first"),
        ({"JUDGE_BASE_URL": "http://judge:8000/v1", "JUDGE_NODES": "0"}, "needs JUDGE_MODEL"),
    ],
)
def test_bad_variables_stop_with_one_line(env, message):
    out = subprocess.run(
        ["bash", str(CLUSTER_ENV), "--print"], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and message in out.stderr, (
        out.stderr
    )


def test_sbatch_allocations_match_the_default_layout():
    env = {k: v for k, v in os.environ.items() if k not in ("TRAIN_NODES", "JUDGE_NODES", "GPUS_PER_NODE")}
    values = dict(
        line.split("=", 1)
        for line in subprocess.run(
            ["bash", str(CLUSTER_ENV), "--print"], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    for twin in ("grpo_flip", "grpo_llmjudge"):
        text = (REPO / f"scripts/slurm/{twin}.sbatch").read_text()
        assert f"#SBATCH --nodes={int(values['TRAIN_NODES']) + int(values['JUDGE_NODES'])}" in text
        assert f"#SBATCH --gpus-per-node={values['GPUS_PER_NODE']}" in text
        assert f"JUDGE_TYPE={twin.removeprefix('grpo_')}" in text


def test_judge_server_listens_where_asked():
    local = JudgeServer("m", port=8123)
    assert local.command()[local.command().index("--host") + 1] == "127.0.0.1"
    everywhere = JudgeServer("m", port=8123, host="0.0.0.0")
    assert everywhere.command()[everywhere.command().index("--host") + 1] == "0.0.0.0"
    assert everywhere.api_base == "http://127.0.0.1:8123/v1"  # reached locally through loopback


def test_judge_server_on_cpu_runs_eagerly_unless_the_user_says_otherwise(monkeypatch):
    # torch.compile's warm-up doubled every CPU judge server's start-up (67 s against 32 s) for no gain, and a
    # worker process of its own took 35 s against 21 s
    monkeypatch.setattr(judge_server, "has_cuda", lambda: False)
    cmd = JudgeServer("m", port=8123).command()
    assert cmd[-3:] == ["--dtype", "float32", "--enforce-eager"]
    mine = JudgeServer("m", port=8123, extra_args=["--no-enforce-eager"]).command()
    assert mine.index("--no-enforce-eager") > mine.index("--enforce-eager")  # argparse: the last one wins
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    env = JudgeServer("m", port=8123).environment()
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    monkeypatch.setattr(judge_server, "has_cuda", lambda: True)
    assert not {"--enforce-eager", "--dtype"} & set(JudgeServer("m", port=8123).command())  # GPU: defaults
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in JudgeServer("m", port=8123).environment()


# --------------------------------------------------------------------------------------------------
# Beaker


def make_spec(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BEAKER_", "TRAIN_", "JUDGE_", "GPUS_"))}
    return subprocess.run(
        [sys.executable, str(MAKE_SPEC), *args], env={**base, **env}, capture_output=True, text=True
    )


def test_beaker_spec_for_the_paper_preset():
    out = make_spec(
        "--beaker_image",
        "me/flip",
        "--beaker_cluster",
        "ai2/a,ai2/b",
        "--",
        "--learning_rate",
        "5e-7",
        WANDB_API_KEY="do-not-copy-me",
        HF_TOKEN="nor-me",
        RAY_AUTH_TOKEN="nor-this",
    )
    assert out.returncode == 0, out.stderr
    for secret in ("do-not-copy-me", "nor-me", "nor-this"):
        assert secret not in out.stdout
    spec = yaml.safe_load(out.stdout)
    assert spec["version"] == "v2" and len(spec["tasks"]) == 1
    task = spec["tasks"][0]
    assert task["replicas"] == 4 and task["leaderSelection"] and task["hostNetworking"]
    assert task["propagateFailure"] and task["propagatePreemption"]
    assert task["resources"]["gpuCount"] == 8
    assert task["image"] == {"beaker": "me/flip"} and task["constraints"] == {"cluster": ["ai2/a", "ai2/b"]}
    assert task["context"] == {"priority": "normal", "preemptible": False}
    assert task["result"] == {"path": "/output"}
    command = " ".join(task["command"])
    assert "scripts/cluster/ray_node.sh beaker" in command and task["command"][-2:] == [
        "--learning_rate",
        "5e-7",
    ]
    plain = {e["name"]: e["value"] for e in task["envVars"] if "value" in e}
    assert plain["PRESET"] == "paper" and plain["TRAIN_NODES"] == "3" and plain["JUDGE_NODES"] == "1"
    assert (
        plain["JUDGE_TYPE"] == "flip"
        and plain["OUTPUT_DIR"] == "/output"
        and plain["JUDGE_HOST"] == "0.0.0.0"
    )
    secrets = {e["name"]: e["secret"] for e in task["envVars"] if "secret" in e}
    assert secrets == {
        "WANDB_API_KEY": "WANDB_API_KEY",
        "HF_TOKEN": "HF_TOKEN",
        "RAY_AUTH_TOKEN": "RAY_AUTH_TOKEN",
    }
    assert all(set(e) in ({"name", "value"}, {"name", "secret"}) for e in task["envVars"])


def test_beaker_spec_with_two_judge_nodes_has_a_replica_for_each():
    out = make_spec("--beaker_image", "me/flip", "--beaker_cluster", "ai2/a", "--judge_nodes", "2")
    assert out.returncode == 0, out.stderr
    task = yaml.safe_load(out.stdout)["tasks"][0]
    assert task["replicas"] == 5  # 3 train, the head and one more judge node
    plain = {e["name"]: e["value"] for e in task["envVars"] if "value" in e}
    assert plain["JUDGE_NODES"] == "2" and plain["JUDGE_REPLICAS"] == "8"
    assert "2 judge node(s) x 8 copies of the judge" in out.stderr + out.stdout


def test_a_preemptible_beaker_spec_is_retried_and_so_resumes():
    out = make_spec("--beaker_image", "me/flip", "--beaker_cluster", "ai2/a", "--beaker_preemptible", "1")
    spec = yaml.safe_load(out.stdout)
    assert spec["retry"] == {"allowedTaskRetries": 5} and spec["tasks"][0]["context"]["preemptible"] is True
    plain = make_spec("--beaker_image", "me/flip", "--beaker_cluster", "ai2/a")
    assert "retry" not in yaml.safe_load(plain.stdout)


def test_beaker_spec_single_node_with_mounts(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    out = make_spec(
        "--beaker_image",
        "me/flip",
        "--beaker_cluster",
        "ai2/a",
        "--train_nodes",
        "1",
        "--judge_nodes",
        "0",
        "--judge_type",
        "llmjudge",
        "--beaker_datasets",
        "weka:bucket:/weka",
        "--output_dir",
        "/weka/runs/x",
        "--ray_auth_mode",
        "disabled",
        "-o",
        str(spec_file),
    )
    assert out.returncode == 0, out.stderr
    task = yaml.safe_load(spec_file.read_text())["tasks"][0]
    assert "replicas" not in task and "leaderSelection" not in task  # one node: nothing to coordinate
    assert task["datasets"] == [{"mountPath": "/weka", "source": {"weka": "bucket"}}]
    plain = {e["name"]: e.get("value") for e in task["envVars"]}
    assert plain["JUDGE_TYPE"] == "llmjudge" and plain["OUTPUT_DIR"] == "/weka/runs/x"
    assert "RAY_AUTH_TOKEN" not in plain


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_nodes", "-1"], "TRAIN_NODES must be a whole number"),
        (["--judge_nodes", "2", "--judge_replicas", "9"], "needs JUDGE_GPUS x JUDGE_REPLICAS = 9 GPUs"),
        (["--beaker_cluster", ""], "BEAKER_CLUSTER is required"),
        (["--beaker_priority", "asap"], "BEAKER_PRIORITY must be one of"),
        (["--beaker_datasets", "nfs:/x"], "BEAKER_DATASETS"),
    ],
)
def test_beaker_spec_bad_input_is_one_line(args, message):
    out = make_spec("--beaker_image", "me/flip", "--beaker_cluster", "ai2/a", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_beaker_spec_help_lists_every_variable():
    out = make_spec("--help")
    assert out.returncode == 0
    for flag in (
        "--train_nodes",
        "--judge_nodes",
        "--gpus_per_node",
        "--judge_gpus",
        "--preset",
        "--ray_port",
        "--judge_port",
        "--output_dir",
        "--beaker_image",
        "--beaker_cluster",
        "--beaker_secrets",
    ):
        assert flag in out.stdout
