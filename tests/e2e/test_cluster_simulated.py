"""Placement, rendezvous and the multi-learner code that GPU clusters run, exercised for real on a simulated Ray
cluster (testing/ray_cluster.py): a head node without GPUs where the driver joins, and nodes at their own
loopback addresses that declare GPUs. Learners there are several DeepSpeed ranks on gloo: the same
data-parallel code as NCCL on GPUs. The placement arithmetic itself is tested in tests/test_cluster.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from open_instruct import cluster
from open_instruct.grpo_config import parse_args
from open_instruct.testing.ray_cluster import SimulatedCluster
from open_instruct.testing.verifiers import write_word_rows

REPO = Path(__file__).resolve().parents[2]
PAPER_FLAGS = [
    *(
        "--model_name_or_path m --num_learners_per_node 8 --vllm_num_engines 16 "
        "--deepspeed_stage 3 --num_unique_prompts_rollout 24 --total_episodes 192"
    ).split()
]


def test_paper_placement_puts_eight_learners_on_one_node_and_engines_on_the_others(gpu_cluster, driver):
    plan, found, problem = cluster.plan_for_cluster(parse_args(PAPER_FLAGS)[0])
    assert problem is None and len(found) == 4 and plan.on_gpu
    placement = cluster.Placement(plan, timeout=60)
    try:
        ranks, engines = placement.node_ips()
    finally:
        placement.remove()
    assert len(set(ranks)) == 1 and ranks[0] in gpu_cluster.ips and ranks[0] != driver
    assert len(engines) == 16 and ranks[0] not in engines and set(engines) <= set(gpu_cluster.ips)
    assert sorted(engines.count(ip) for ip in set(engines)) == [8, 8]


REFERENCE = """
import sys, torch
from open_instruct.net_utils import free_port
from open_instruct.learner import PolicyLearner
from open_instruct.packing import plan_step
sys.path.insert(0, sys.argv[3])
from test_cluster_simulated import learner_config, step_samples
learner = PolicyLearner(learner_config(sys.argv[1], int(sys.argv[2])), 0, 1)
learner.setup("127.0.0.1", free_port())
learner.train(plan_step(step_samples(), 1, 1, 96)[0])
torch.save(dict(learner.named_weights()), sys.argv[4])
"""


def learner_config(model: str, stage: int):
    from open_instruct.learner import LearnerConfig
    from open_instruct.rl_utils import LossConfig

    # the loss as the trainer's defaults set it (truncated importance sampling capped at 2.0)
    return LearnerConfig(
        model,
        learning_rate=1e-2,
        deepspeed_stage=stage,
        pack_length=96,
        total_steps=1,
        backend_timeout=120,
        loss=LossConfig(tis_cap=2.0),
    )


def step_samples():
    """5 samples of 13-45 tokens: with 96-token micro-batches they fill 2 or 3, so of 4 ranks one or two get
    nothing but padding."""
    from open_instruct.packing import Sample

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(5):
        q, r = 5 + 3 * i, 8 + 4 * i
        out.append(
            Sample(
                torch.randint(3, 600, (q,), generator=g).tolist(),
                torch.randint(3, 600, (r,), generator=g).tolist(),
                [-6.0] * r,
                float(i) - 2.0,
            )
        )
    return out


def _weights(learner) -> dict:
    return {name: t.to("cpu", copy=True) for name, t in learner.named_weights()}


@pytest.mark.parametrize("stage", [2, 3])
def test_four_learners_on_two_nodes_train_like_one(stage, gpu_cluster, driver, tiny_judge_dir, tmp_path):
    """2 nodes x 2 gloo learners: rank 0 hosts the rendezvous on its own node (not the driver's), a step with
    uneven shards and padding-only ranks ends (no rank waits in a collective), every rank ends with the same
    parameters, and they equal one learner's on the same samples. Under ZeRO-3 each rank loaded a quarter
    of the model, and only rank 0 copies the weights to host memory to save them."""
    import ray

    from open_instruct.grpo_fast import learner_config as from_flags
    from open_instruct.packing import plan_step

    ref_path = tmp_path / "reference.pt"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            REFERENCE,
            str(tiny_judge_dir),
            str(stage),
            str(Path(__file__).parent),
            str(ref_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = torch.load(ref_path)

    cfg = parse_args(
        [
            *(
                f"--model_name_or_path {tiny_judge_dir} --num_learners_per_node 2 2 --deepspeed_stage "
                f"{stage} --learning_rate 1e-2 --pack_length 96 --max_prompt_token_length 64 "
                "--response_length 32 --backend_timeout 2 --num_unique_prompts_rollout 1 "
                "--total_episodes 8"
            ).split()
        ]
    )[0]
    plan, _, problem = cluster.plan_for_cluster(cfg)
    assert problem is None
    placement = cluster.Placement(plan, timeout=60)
    learners = []
    try:
        ranks_at, _ = placement.node_ips()
        assert len(set(ranks_at)) == 2 and ranks_at[0] == ranks_at[1] != ranks_at[2] == ranks_at[3]
        learners, reports = cluster.create_learners(placement, from_flags(cfg, total_steps=1), 0, timeout=300)
        host, _ = reports[0]["rendezvous"].split(":")
        assert host == ranks_at[0] != driver, (reports[0]["rendezvous"], ranks_at, driver)
        if stage == 3:
            full = sum(t.numel() * t.element_size() for t in reference.values())
            assert all(r["loaded_param_bytes"] < 0.3 * full for r in reports), [
                r["loaded_param_bytes"] for r in reports
            ]

        batches = plan_step(step_samples(), 4, 1, 96)
        assert any(all(not micro for micro in b.micro_batches[0]) for b in batches), (
            "a rank with only padding"
        )
        stats = ray.get([lr.train.remote(b) for lr, b in zip(learners, batches, strict=True)], timeout=300)
        assert {s["micro_batches"] for s in stats} == {len(batches[0].micro_batches[0])}
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
        per_rank = ray.get([lr.__ray_call__.remote(_weights) for lr in learners], timeout=300)
        for weights in per_rank:
            assert weights.keys() == reference.keys()
            for name, w in reference.items():
                torch.testing.assert_close(weights[name], w, atol=2e-4, rtol=0)
        saved = ray.get([lr.save_model.remote(str(tmp_path / "hf")) for lr in learners], timeout=300)
        assert saved[0]["host_bytes"] == sum(t.numel() * t.element_size() for t in reference.values())
        assert [s["host_bytes"] for s in saved[1:]] == [0, 0, 0]
    finally:
        for lr in learners:
            ray.kill(lr)
        placement.remove()
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_judge_dir).state_dict()
    assert (
        max((reference[k] - initial[k]).abs().max().item() for k in reference) > 1e-3
    )  # the step moved the weights


def test_trainer_runs_four_learners_on_two_nodes(gpu_cluster, tiny_policy_dir, tmp_path):
    """The trainer itself on the simulated cluster: 2 x 2 ZeRO-3 learners on two GPU nodes, the engine on a
    third, the driver on the head node. 3 prompts x 3 samples of 15-28 tokens a step in micro-batches of 36:
    one or two samples each, so a per-rank packing would give ranks different numbers of passes (a hang
    before the step was packed globally). Two rollout calls per engine and --async_steps 1, so a step can mix
    weight versions; the metrics say which."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "open_instruct.grpo_fast",
        "--model_name_or_path",
        str(tiny_policy_dir),
        "--dataset_mixer_list",
        str(write_word_rows(tmp_path / "word.jsonl", 6)),
        "1.0",
        "--output_dir",
        str(out),
        "--ray_address",
        gpu_cluster.address,
        "--num_learners_per_node",
        "2",
        "2",
        "--deepspeed_stage",
        "3",
        "--num_unique_prompts_rollout",
        "3",
        "--num_samples_per_prompt_rollout",
        "3",
        "--total_episodes",
        "27",
        "--response_length",
        "12",
        "--max_prompt_token_length",
        "24",
        "--pack_length",
        "36",
        "--learning_rate",
        "1e-3",
        "--rollout_chunks_per_engine",
        "2",
        "--filter_zero_std_samples",
        "False",
        "--backend_timeout",
        "4",
        "--verifier_modules",
        "open_instruct.testing.verifiers",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["samples_trained"] == 9 for m in metrics)
    assert all(0 <= m["weights_staleness_min"] <= m["weights_staleness"] <= 1 for m in metrics)
    # rank 0's node hosts the rendezvous, and the placement names it
    rendezvous = proc.stdout.split("learner rendezvous ")[1].split(":")[0]
    assert rendezvous in gpu_cluster.ips
    assert f"{rendezvous}: learner rank(s) 0-1 (rendezvous: rank 0)" in proc.stdout
    assert "on 4 node(s)" in proc.stdout and "trained 3 steps" in proc.stdout
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0


def test_single_gpu_preset_starts_on_a_one_gpu_cluster(tiny_policy_dir, tmp_path):
    """PRESET=single_gpu on a cluster whose only GPU node has one GPU: the engine and the learner share it
    (failed before: they asked for two GPUs and the run stopped at the resource check)."""
    from open_instruct.testing.scripted_judge import Reply, ScriptedJudge

    one_gpu = SimulatedCluster([("127.0.0.5", 1, 4)])
    try:
        with ScriptedJudge(
            lambda messages, n: Reply(json.dumps({"INFERRED INSTRUCTION": "Write a poem."}))
        ) as judge:
            env = {
                **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
                "PYTHON": sys.executable,
                "PRESET": "single_gpu",
                "MODEL_NAME_OR_PATH": str(tiny_policy_dir),
                "RAY_ADDRESS": one_gpu.address,
                "DATASETS": "data/general_chat_flip_sample.jsonl 1.0",
                "JUDGE_BASE_URL": judge.api_base,
                "JUDGE_MODEL": "hosted_vllm/scripted",
                "OUTPUT_DIR": str(tmp_path / "out"),
            }
            proc = subprocess.run(
                [
                    *(
                        "bash scripts/train/grpo_flip.sh --total_episodes 16 --num_unique_prompts_rollout 4 "
                        "--num_samples_per_prompt_rollout 4 --response_length 8 --max_prompt_token_length 256"
                    ).split()
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
    finally:
        one_gpu.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "127.0.0.5: learner rank(s) 0 (rendezvous: rank 0), engine(s) 0" in proc.stdout
    assert "trained 1 steps" in proc.stdout
