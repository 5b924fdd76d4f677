"""`grpo_fast --dry_run`: check everything a run needs, print the plan; start no server, load no weights.

Checked, each problem one line and every check run whatever the others found: every flag
(grpo_config.parse_args; a flag mistake stops there, as it makes the rest meaningless), the model's
tokenizer and chat template, every dataset row of both mixtures, the judge settings and endpoint (one
completion of one token through the same client the run uses; when the launch script would serve the judge
itself, it is reported as not started), the model's config, and the Ray cluster's nodes against the bundles
the run will reserve (cluster.fit; a local cluster is this machine, CPUs and GPUs as they are). When they
fit, the placement groups are reserved as the run would reserve them, read back (which node holds which
learner ranks and engines, and where the learners' rendezvous is) and released; no actor starts. Printed:
that placement, per-step batch sizes, and a rough memory estimate per GPU from the model's config
(parameters counted on the meta device, so no weights are read). Exit status 2 when there is a problem.
"""

import asyncio
import math
import os
from dataclasses import dataclass, replace

from open_instruct import cluster, downstream_eval
from open_instruct.cli_utils import first_line
from open_instruct.grpo_config import GRPOConfig

GiB = 1024**3
# Set by scripts/train/grpo_*.sh in a dry run: the judge model it would serve (and does not start) at the
# address the trainer is given.
LAUNCHER_JUDGE_ENV = "DRY_RUN_LAUNCHER_JUDGE"


@dataclass
class ModelShape:
    params: int
    layers: int
    hidden: int
    vocab: int
    kv_bytes_per_token: int  # K and V of every layer, bf16


def model_shape(model_name_or_path: str) -> ModelShape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_name_or_path)
    with torch.device("meta"):  # shapes only: no memory, no weights read
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    kv = 2 * text.num_hidden_layers * kv_heads * head_dim * 2
    return ModelShape(params, text.num_hidden_layers, text.hidden_size, text.vocab_size, kv)


def learner_memory(cfg: GRPOConfig, shape: ModelShape, world: int) -> dict[str, float]:
    """Bytes per learner GPU, roughly: bf16 weights and grads, fp32 AdamW master weights and moments
    (sharded over the learners by ZeRO: stage 2 shards grads and optimizer, stage 3 the weights too), the
    bf16 logits of one packed micro-batch and their gradient (the float32 log-softmax is taken a bounded
    chunk at a time, packing.LOGIT_CHUNK_ELEMENTS), and activations (one bf16 hidden state per layer with
    gradient checkpointing, about 16 without)."""
    from open_instruct.packing import LOGIT_CHUNK_ELEMENTS

    P, T = shape.params, cfg.pack_length
    weights = 2 * P / (world if cfg.deepspeed_stage == 3 else 1)
    grads_optimizer = (2 + 12) * P / world
    logits = 2 * (2 * T * shape.vocab) + 3 * 4 * min(LOGIT_CHUNK_ELEMENTS, T * shape.vocab)
    activations = shape.layers * T * shape.hidden * 2 * (1 if cfg.gradient_checkpointing else 16)
    reference = 2 * P if cfg.beta > 0 else 0  # the frozen reference policy, unsharded
    return {
        "weights": weights,
        "grads+optimizer": grads_optimizer,
        "logits": logits,
        "activations": activations,
        "reference": reference,
    }


def gpu_memory() -> float | None:
    try:
        import torch

        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001  (no driver, no device: unknown)
        return None


def check_judge(trainer) -> str | None:
    """One completion of one token from every replica of the judge, through the run's own client settings;
    None when all of them answered."""
    from open_instruct.judge_client import JudgeClient

    judge = trainer.judge
    if judge is None:
        return None
    settings = replace(judge.config, max_tokens=1, retries=0, timeout=min(judge.config.timeout, 60))
    pings = [JudgeClient(replace(settings, api_base=base)) for base in judge.api_bases] or [
        JudgeClient(settings)
    ]

    async def ask_all():
        return await asyncio.gather(
            *(p.complete([{"role": "user", "content": "Reply with OK."}]) for p in pings)
        )

    for ping, result in zip(pings, asyncio.run(ask_all()), strict=True):
        if not result.ok:
            return f"judge {ping.endpoint} did not answer: {result.error}"
    return None


def cluster_plan(cfg: GRPOConfig) -> tuple[list, str, cluster.Layout, str | None, list[str]]:
    """(alive nodes, where they came from, the layout, why it does not fit, where each actor would go).
    Joins the cluster the run would use, as the run would; when the layout fits, reserves its placement
    groups, reads back the nodes Ray chose and releases them."""
    import ray

    where = cluster.init_ray(cfg)
    try:
        plan, nodes, shortfall = cluster.plan_for_cluster(cfg)
        placed: list[str] = []
        if not shortfall:
            try:
                placement = cluster.Placement(plan, timeout=60)
            except TimeoutError as e:
                shortfall = str(e)
            else:
                placed = placement.describe()
                placement.remove()
    finally:
        ray.shutdown()
    return nodes, where, plan, shortfall, placed


def eval_lines(cfg: GRPOConfig, plan: cluster.Layout, gpus: float, problems: list[str]) -> list[str]:
    """Where the downstream evaluations (--oe_eval_tasks) would run; a problem when they could not."""
    if not cfg.oe_eval_tasks:
        return []
    when = "every saved checkpoint and the final model" + (" and step 0" if cfg.eval_on_step_0 else "")
    free = gpus - plan.needs()["GPU"]
    if problem := downstream_eval.no_gpu_left(cfg, plan, gpus):
        problems.append(problem)
    where = (
        f"a Ray task of 1 GPU ({free:g} GPU(s) left free by the plan)" if plan.on_gpu else "a Ray task on CPU"
    )
    return [
        f"  evaluation {','.join(cfg.oe_eval_tasks)} on {when}: python -m open_instruct.evaluate in the "
        f"background, one at a time, as {where}; results in {cfg.output_dir}/eval/downstream_step_N.json"
    ]


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def run(cfg: GRPOConfig, trainer, problems: list[str]) -> int:
    """Print the plan and every problem, one line each: those the trainer's setup collected (`problems`:
    model, data, judge settings), then the judge endpoint, the model's config and the cluster."""
    launcher_judge = os.environ.get(LAUNCHER_JUDGE_ENV)
    judge_down = None if launcher_judge else check_judge(trainer)
    if judge_down:
        problems.append(judge_down)
    shape = None
    try:
        shape = model_shape(cfg.model_name_or_path)
    except (OSError, ValueError, KeyError) as e:
        if not any(p.startswith(f"--model_name_or_path {cfg.model_name_or_path}") for p in problems):
            problems.append(
                f"--model_name_or_path {cfg.model_name_or_path}: cannot read its config ({first_line(e)})"
            )
    nodes, where, plan, shortfall, placed = cluster_plan(cfg)
    gpus = sum(n.gpus for n in nodes)
    on_gpu, world = plan.on_gpu, plan.world_size
    if shortfall:
        problems.append(f"{shortfall} ({where})")
    if not on_gpu and cfg.vllm_tensor_parallel_size > 1:
        problems.append(
            f"{where} has no GPU: --vllm_tensor_parallel_size {cfg.vllm_tensor_parallel_size} needs GPUs"
        )

    if trainer.judge is None:
        judge = (
            "none (no judge-based verifier)"
            if cfg.llm_judge_model is None
            else "not usable (see the problems below)"
        )
    elif launcher_judge:
        judge = f"{trainer.judge.endpoint}: not started (dry run); the launch script would serve {launcher_judge} there"
    else:
        replicas = len(trainer.judge.api_bases)
        answered = f" (all {replicas} answered)" if replicas > 1 else " (answered)"
        judge = trainer.judge.endpoint + ("" if judge_down else answered)
    per_rank = cfg.batch_size / world
    seq = cfg.max_prompt_token_length + cfg.response_length
    # the whole step is packed at once and dealt out evenly (packing.plan_step); worst case: every sample is
    # as long as the longest allowed
    micro = math.ceil(
        math.ceil(cfg.batch_size / cfg.num_mini_batches / max(cfg.pack_length // seq, 1)) / world
    )
    lines = [
        f"dry run: {cfg.exp_name} -> {cfg.output_dir}",
        f"  cluster    {where}: {len(nodes)} node(s), {sum(n.cpus for n in nodes):g} CPUs, {gpus:g} GPUs"
        + (" (set RAY_ADDRESS or --ray_address to check a cluster)" if where.startswith("a local") else ""),
        f"  model      {cfg.model_name_or_path}: "
        + (
            f"{_count(shape.params)} parameters, {shape.layers} layers, vocab {shape.vocab}"
            if shape
            else "config not read"
        ),
        f"  data       {len(trainer.prompts)} training prompts, {len(trainer.eval_prompts)} eval prompts"
        + ("" if trainer.tokenizer is not None else " (not tokenized: no tokenizer)"),
        f"  learners   {world} DeepSpeed learner(s), ZeRO-{cfg.deepspeed_stage}, "
        f"{' + '.join(map(str, plan.learners_per_node))} per node (a node of their own each, STRICT_SPREAD), "
        + (f"{plan.learner_gpus:g} GPU each, NCCL" if on_gpu else "on CPU with gloo"),
        f"  engines    {cfg.vllm_num_engines} vLLM engine(s) x TP {cfg.vllm_tensor_parallel_size}"
        + (f", {plan.engine_gpus:g} GPU each" if on_gpu else " on CPU")
        + (
            " on the learner's GPU (--single_gpu_mode)"
            if plan.shared
            else ", on the GPUs the learners leave (PACK)"
            if on_gpu
            else " (PACK)"
        ),
        "  placement  "
        + ("as Ray granted it (then released):" if placed else "not reserved (see the problems below)"),
        *(f"    {line}" for line in placed),
        f"  judge      {judge}",
        f"  per step   {cfg.num_unique_prompts_rollout} prompts x {cfg.num_samples_per_prompt_rollout} samples = "
        f"{cfg.batch_size} samples; {per_rank:g} per learner, in {cfg.num_mini_batches} mini-batch(es), up to "
        f"{micro} micro-batch(es) per learner per mini-batch of <= {cfg.pack_length} tokens each "
        f"(longest sample {seq})",
        f"  schedule   {cfg.num_training_steps} steps ({cfg.total_episodes} episodes), async_steps {cfg.async_steps}, "
        f"state every {cfg.checkpoint_state_freq or 'never'}, model every {cfg.save_freq or 'end'}",
    ]
    lines += eval_lines(cfg, plan, gpus, problems)
    mem, device = (learner_memory(cfg, shape, world) if shape else None), gpu_memory()
    if shape:
        lines += [
            "  memory per learner GPU (rough): "
            + ", ".join(f"{k} {v / GiB:.1f} GiB" for k, v in mem.items() if v)
            + f"; total {sum(mem.values()) / GiB:.1f} GiB"
            + (f" of {device / GiB:.0f}" if device else ""),
            f"  memory per engine GPU: weights {2 * shape.params / cfg.vllm_tensor_parallel_size / GiB:.1f} GiB; KV cache "
            f"{shape.kv_bytes_per_token / 1024:.0f} KiB/token, {shape.kv_bytes_per_token * seq / GiB:.2f} GiB per full "
            f"sequence, in the rest of --vllm_gpu_memory_utilization {cfg.vllm_gpu_memory_utilization:g}",
        ]
    if plan.shared:
        engines_share = cfg.vllm_num_engines * cfg.vllm_gpu_memory_utilization
        lines.append(
            f"  shared GPU the engines take {engines_share:g} of its memory (--vllm_gpu_memory_utilization "
            f"{cfg.vllm_gpu_memory_utilization:g} each), a judge served there its own --gpu-memory-utilization "
            f"share (0.2 in PRESET=single_gpu), the learner the rest"
        )
        if engines_share >= 1:
            problems.append(
                f"--single_gpu_mode: the engines' --vllm_gpu_memory_utilization adds up to {engines_share:g} "
                "of the GPU, leaving nothing for the learner"
            )
        if mem and device and sum(mem.values()) > (1 - engines_share) * device:
            lines.append(
                f"  warning: the learner estimate exceeds the {(1 - engines_share) * device / GiB:.0f} GiB the "
                "engines leave on the shared GPU"
            )
    print("\n".join(lines))
    if mem and device and sum(mem.values()) > device:
        print(
            f"  warning: the learner estimate exceeds one GPU's {device / GiB:.0f} GiB: consider --deepspeed_stage 3, "
            "--gradient_checkpointing or a smaller --pack_length"
        )
    for p in problems:
        print(f"problem: {p}")
    print("dry run: " + ("ok, nothing was trained" if not problems else f"{len(problems)} problem(s)"))
    return 2 if problems else 0
