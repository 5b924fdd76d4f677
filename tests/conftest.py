import os
from pathlib import Path

# Tests never reach the internet: litellm must use its bundled price map, wandb stays offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest

from open_instruct.testing.ray_cluster import SimulatedCluster


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A tiny random-weight Qwen2 chat model with its own tokenizer, built offline once per session."""
    from open_instruct.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-judge"), seed=0)


@pytest.fixture(scope="session")
def flip_world() -> Path:
    """The small world's judge and policy (open_instruct/testing/world_models.py), built once into
    .cache/flip-world, where the tiny preset looks for them, and cached across runs (6 minutes on 2 cores the
    first time). Every test that runs the tiny preset, dry runs included, asks for it first, so no launch
    script starts that build inside a test's own time limit."""
    from open_instruct.testing.world_models import build_world

    return build_world(Path(__file__).resolve().parent.parent / ".cache" / "flip-world", seed=0, quiet=True)


@pytest.fixture(scope="session")
def gpu_cluster():
    """The published recipe's shape: a head node without GPUs (the driver and, on Slurm, the judge) and
    3 nodes of 8 GPUs at 127.0.0.2-4. Shared by every test that needs a multi-node cluster."""
    cluster = SimulatedCluster([(f"127.0.0.{i}", 8, 16) for i in (2, 3, 4)])
    yield cluster
    cluster.stop()
