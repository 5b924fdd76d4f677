"""The DeepSpeed learner for real: gradient accumulation over micro-batches under ZeRO-2 and ZeRO-3 (with and
without a reference policy) against one full-batch update."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


# Every configuration in one process (one gloo group, set up once): a learner per configuration, each from the
# same seed. In a process of its own each, the five start-ups took most of the test's time.
SCRIPT = """
import json, sys, torch
from open_instruct.learner import LearnerConfig, PolicyLearner
from open_instruct.packing import Sample, plan_step
from open_instruct.net_utils import free_port
from open_instruct.rl_utils import LossConfig
model, out, keys = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
port = free_port()
runs = {}
for stage, pack_length, beta in keys:
    cfg = LearnerConfig(model, learning_rate=1e-2, deepspeed_stage=stage, pack_length=pack_length, total_steps=2,
                        loss=LossConfig(beta=beta))
    learner = PolicyLearner(cfg, 0, 1)
    learner.setup("127.0.0.1", port)
    g = torch.Generator().manual_seed(0)
    samples = [Sample(torch.randint(3, 600, (5 + i,), generator=g).tolist(),
                      torch.randint(3, 600, (4 + 2 * i,), generator=g).tolist(), [-6.0] * (4 + 2 * i), i - 1.5)
               for i in range(4)]
    stats = [learner.train(plan_step(samples, 1, 1, pack_length)[0]) for _ in range(2)]
    runs[(stage, pack_length, beta)] = {"weights": dict(learner.named_weights()), "stats": stats}
    del learner
torch.save(runs, out)
"""

KEYS = [(2, 10_000, 0.0), (2, 20, 0.0), (3, 20, 0.0), (2, 10_000, 0.5), (3, 20, 0.5)]


def test_micro_batches_accumulate_to_the_full_batch_update(tmp_path, tiny_judge_dir):
    """One micro-batch vs several (a small pack_length), under ZeRO-2 and ZeRO-3, two steps: same loss, same
    gradient norm, same updated weights, same engine-vs-learner log-prob gap. With a KL penalty (beta > 0) the reference policy is loaded as well,
    partitioned under ZeRO-3, and its KL term (non-zero once the policy has moved) matches too."""
    out = tmp_path / "runs.pt"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_judge_dir), str(out), json.dumps(KEYS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = torch.load(out)
    for base_key, others in [
        ((2, 10_000, 0.0), [(2, 20, 0.0), (3, 20, 0.0)]),
        ((2, 10_000, 0.5), [(3, 20, 0.5)]),
    ]:
        base = runs[base_key]
        assert [s["updates"] for s in base["stats"]] == [1, 1] and base["stats"][0]["grad_norm"] > 0
        for key in others:
            other = runs[key]
            for mine, theirs in zip(other["stats"], base["stats"], strict=True):
                assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
                assert mine["loss_sum"] == pytest.approx(theirs["loss_sum"], rel=1e-4, abs=1e-6)
                assert mine["kl_sum"] == pytest.approx(theirs["kl_sum"], rel=1e-3, abs=1e-6)
                # learner vs engine (-6.0 for every token here), before the update, whatever the micro-batching
                for k in ("logprob_diff_sum", "logprob_diff_max"):
                    assert mine[k] == pytest.approx(theirs[k], rel=1e-4) and mine[k] > 0
            for name, w in base["weights"].items():
                torch.testing.assert_close(other["weights"][name], w, atol=2e-4, rtol=0)
    assert runs[(2, 10_000, 0.5)]["stats"][1]["kl_sum"] > 0  # the policy moved away from the reference
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_judge_dir).state_dict()
    trained = runs[(2, 10_000, 0.0)]["weights"]
    moved = max((trained[k] - initial[k]).abs().max().item() for k in trained)
    assert moved > 1e-3  # the step really changed the weights
