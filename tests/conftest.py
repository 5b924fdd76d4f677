import os

# Tests never reach the internet: litellm must use its bundled price map, wandb stays offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A tiny random-weight Qwen2 chat model with its own tokenizer, built offline once per session."""
    from open_instruct.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-judge"), seed=0)
