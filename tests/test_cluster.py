"""Placement and rendezvous (open_instruct/cluster.py), and the multi-learner code that GPU clusters run,
exercised for real on a simulated Ray cluster (testing/ray_cluster.py): a head node without GPUs where the
driver joins, and nodes at their own loopback addresses that declare GPUs. Learners there are several
DeepSpeed ranks on gloo: the same data-parallel code as NCCL on GPUs."""

from pathlib import Path

import pytest

from open_instruct import cluster
from open_instruct.cli_utils import UserError
from open_instruct.cluster import Node, fit, layout
from open_instruct.grpo_config import parse_args

REPO = Path(__file__).resolve().parent.parent
PAPER_FLAGS = [
    *(
        "--model_name_or_path m --num_learners_per_node 8 --vllm_num_engines 16 "
        "--deepspeed_stage 3 --num_unique_prompts_rollout 24 --total_episodes 192"
    ).split()
]


def config(*flags: str):
    return parse_args(["--model_name_or_path", "m", *flags])[0]


def nodes(*gpus: float, cpus: float = 16) -> list[Node]:
    """A head node without GPUs, then one node per entry."""
    return [Node("head", "10.0.0.1", 8, 0)] + [
        Node(f"n{i}", f"10.0.0.{i + 2}", cpus, g) for i, g in enumerate(gpus)
    ]


def test_paper_layout_fits_three_nodes_of_eight_and_a_judge_node():
    plan = layout(parse_args(PAPER_FLAGS)[0], on_gpu=True)
    assert plan.learner_bundles == [{"GPU": 8, "CPU": 8}]
    assert plan.engine_bundles == [{"GPU": 1, "CPU": 1}] * 16 and plan.learner_gpus == 1
    assert fit(plan, nodes(8, 8, 8)) is None


def test_more_gpus_than_the_cluster_has_is_one_line():
    plan = layout(parse_args([*PAPER_FLAGS, "--vllm_num_engines", "20"])[0], on_gpu=True)
    assert fit(plan, nodes(8, 8, 8)) == (
        "the run needs 28 GPUs for 8 learner(s) and 20 engine(s) x TP 1, and the Ray cluster has 24"
    )


def test_learner_groups_need_a_node_each():
    """Enough GPUs in total, but only one node has room for a group of 4 learners."""
    problem = fit(
        layout(config("--num_learners_per_node", "4", "4", "--vllm_num_engines", "1"), True), nodes(8, 2, 2)
    )
    assert problem.startswith(
        "--num_learners_per_node 4 4 needs 2 node(s), each with its learners' GPUs free"
    )
    assert "10.0.0.2: 8 GPU/16 CPU" in problem


def test_engines_need_their_tensor_parallel_gpus_on_one_node():
    plan = layout(
        config("--num_learners_per_node", "4", "--vllm_num_engines", "2", "--vllm_tensor_parallel_size", "4"),
        True,
    )
    assert fit(plan, nodes(6, 6)).startswith("vLLM engine 1 of 2 needs 4 GPU(s) on one node (TP 4)")
    assert fit(plan, nodes(8, 8)) is None


def test_one_gpu_needs_single_gpu_mode_and_then_fits():
    """Failed before --single_gpu_mode: the engine and the learner each asked for a whole GPU."""
    problem = fit(layout(config(), True), nodes(1))
    assert problem == (
        "the run needs 2 GPUs for 1 learner(s) and 1 engine(s) x TP 1, and the Ray cluster has 1; "
        "on one GPU add --single_gpu_mode (the engine and the learner share it)"
    )
    shared = layout(config("--single_gpu_mode"), True)
    assert shared.learner_bundles == [{"GPU": 1, "CPU": 2}] and shared.engine_bundles == []
    assert shared.learner_gpus == 0.5 and shared.engine_gpus == 0.5
    assert fit(shared, nodes(1)) is None
    two_engines = layout(config("--single_gpu_mode", "--vllm_num_engines", "2"), True)
    assert two_engines.engine_gpus == 0.25 and two_engines.learner_bundles == [{"GPU": 1, "CPU": 3}]


def test_single_gpu_mode_takes_one_learner_and_no_tensor_parallelism():
    for flags in (["--num_learners_per_node", "2"], ["--vllm_tensor_parallel_size", "2"]):
        with pytest.raises(UserError, match="--single_gpu_mode needs one learner"):
            config("--single_gpu_mode", *flags)


def test_cpu_cluster_layout_asks_for_cpus_only():
    plan = layout(config("--num_learners_per_node", "2", "2"), on_gpu=False)
    assert plan.learner_bundles == [{"CPU": 2}, {"CPU": 2}] and plan.learner_gpus == 0
    assert plan.engine_bundles == [{"CPU": 1}]
    one_node = [Node("local", "127.0.0.1", 8, 0)]
    assert fit(plan, one_node).startswith(
        "--num_learners_per_node 2 2 needs 2 node(s), each with its learners' CPUs"
    )
    assert fit(layout(config("--num_learners_per_node", "4"), on_gpu=False), one_node) is None


def test_ranks_are_numbered_node_by_node():
    plan = layout(config("--num_learners_per_node", "2", "3"), True)
    assert [plan.learner_bundle(r) for r in range(5)] == [0, 0, 1, 1, 1]
    with pytest.raises(IndexError):
        plan.learner_bundle(5)
    assert cluster._span([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
