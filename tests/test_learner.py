"""Learner pieces: packing, collation alignment, and DeepSpeed gradient accumulation over micro-batches."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from open_instruct.learner import Sample, collate, jit_arch_list, pack

REPO = Path(__file__).resolve().parent.parent


def sample(q: int, r: int, adv: float = 1.0) -> Sample:
    return Sample(list(range(10, 10 + q)), list(range(100, 100 + r)), [-float(i) for i in range(r)], adv)


def test_pack_respects_the_token_budget_and_keeps_every_sample():
    samples = [sample(5, 5), sample(3, 2), sample(8, 8), sample(1, 1), sample(20, 20)]
    bins = pack(samples, pack_length=16)
    assert sorted(id(s) for b in bins for s in b) == sorted(id(s) for s in samples)
    for b in bins:
        total = sum(len(s.query_ids) + len(s.response_ids) for s in b)
        assert total <= 16 or len(b) == 1  # an over-long sample gets a bin of its own


@pytest.mark.parametrize(("value", "expected"), [
    ("9.0a", "9.0"), ("8.0;9.0a", "8.0;9.0"), ("7.5 8.6+PTX 9.0a+PTX", "7.5 8.6+PTX 9.0+PTX"),
    ("10.0f;12.0a", "10.0;12.0"), ("8.0;9.0", "8.0;9.0"),
])  # fmt: skip
def test_arch_list_drops_the_arch_specific_suffix_deepspeed_cannot_parse(value, expected):
    assert jit_arch_list(value) == expected


def test_collate_aligns_mask_and_logprobs_with_next_token_positions():
    batch = collate([sample(3, 2, adv=0.5), sample(1, 3, adv=-1.0)], pad_id=0, device="cpu")
    # sample 0: ids [10 11 12 100 101]; positions 2 and 3 predict the response tokens
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 100, 101]
    assert batch["mask"][0].tolist() == [0, 0, 1, 1]
    assert batch["vllm_logprobs"][0].tolist() == [0, 0, -0.0, -1.0]
    # sample 1: ids [10 100 101 102 pad]; positions 0..2 predict the response, padding is masked
    assert batch["input_ids"][1].tolist() == [10, 100, 101, 102, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0]
    assert batch["mask"][1].tolist() == [1, 1, 1, 0]
    assert batch["advantages"].tolist() == [0.5, -1.0]


SCRIPT = """
import sys, torch
from open_instruct.learner import LearnerConfig, PolicyLearner, Sample
from open_instruct.judge_server import free_port
stage, pack_length, model, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
cfg = LearnerConfig(model, learning_rate=1e-2, deepspeed_stage=stage, pack_length=pack_length, total_steps=1)
learner = PolicyLearner(cfg, 0, 1, "127.0.0.1", free_port())
learner.setup()
g = torch.Generator().manual_seed(0)
samples = [Sample(torch.randint(3, 600, (5 + i,), generator=g).tolist(),
                  torch.randint(3, 600, (4 + 2 * i,), generator=g).tolist(), [-6.0] * (4 + 2 * i), i - 1.5)
           for i in range(4)]
stats = learner.train(samples, sum(len(s.response_ids) for s in samples))
torch.save({"weights": dict(learner.named_weights()), "stats": stats}, out)
"""


@pytest.mark.slow
def test_micro_batches_accumulate_to_the_full_batch_update(tmp_path, tiny_judge_dir):
    """One micro-batch vs several (a small pack_length), under ZeRO-2 and ZeRO-3: same loss, same
    gradient norm, same updated weights."""
    runs = {}
    for stage, pack_length in [(2, 10_000), (2, 20), (3, 20)]:
        out = tmp_path / f"{stage}_{pack_length}.pt"
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(stage), str(pack_length), str(tiny_judge_dir), str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[(stage, pack_length)] = torch.load(out)
    base = runs[(2, 10_000)]
    assert base["stats"]["updates"] == 1 and base["stats"]["grad_norm"] > 0
    for key in [(2, 20), (3, 20)]:
        other = runs[key]
        assert other["stats"]["grad_norm"] == pytest.approx(base["stats"]["grad_norm"], rel=1e-4)
        assert other["stats"]["loss_sum"] == pytest.approx(base["stats"]["loss_sum"], rel=1e-4, abs=1e-6)
        for name, w in base["weights"].items():
            torch.testing.assert_close(other["weights"][name], w, atol=2e-4, rtol=0)
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_judge_dir).state_dict()
    moved = max((base["weights"][k] - initial[k]).abs().max().item() for k in base["weights"])
    assert moved > 1e-3  # the step really changed the weights
