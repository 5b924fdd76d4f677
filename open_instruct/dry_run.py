"""`grpo_fast --dry_run`: check everything a run needs, print the plan, load no model.

Checked: every flag (grpo_config.parse_args), every dataset row (Trainer.setup, which also reads the
tokenizer for prompt lengths), the judge endpoint (one completion of one token through the same client the
run uses), and the Ray cluster's resources against the actors the run will place. Printed: engines and
learners with their placement, per-step batch sizes, and a rough memory estimate per GPU from the model's
config (parameters counted on the meta device, so no weights are read).

Problems are collected and printed one per line; the exit status is 2 when there is any.
"""

import asyncio
import math
from dataclasses import dataclass, replace

from open_instruct.grpo_config import GRPOConfig
from open_instruct.grpo_fast import init_ray, num_learners, required_resources, resource_shortfall

GiB = 1024**3


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
    (sharded over the learners by ZeRO: stage 2 shards grads and optimizer, stage 3 the weights too),
    the float32 logits of one packed micro-batch (and their log-softmax), and activations (one bf16 hidden
    state per layer with gradient checkpointing, about 16 without)."""
    P, T = shape.params, cfg.pack_length
    weights = 2 * P / (world if cfg.deepspeed_stage == 3 else 1)
    grads_optimizer = (2 + 12) * P / world
    logits = 2 * T * shape.vocab * 4
    activations = shape.layers * T * shape.hidden * 2 * (1 if cfg.gradient_checkpointing else 16)
    reference = 2 * P if cfg.beta > 0 else 0  # the frozen reference policy, unsharded
    return {"weights": weights, "grads+optimizer": grads_optimizer, "logits": logits,
            "activations": activations, "reference": reference}  # fmt: skip


def gpu_memory() -> float | None:
    try:
        import torch

        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001  (no driver, no device: unknown)
        return None


def check_judge(trainer) -> str | None:
    """One completion of one token through the run's own judge client settings; None when it answered."""
    from open_instruct.judge_client import JudgeClient

    judge = trainer.judge
    if judge is None:
        return None
    ping = JudgeClient(replace(judge.config, max_tokens=1, retries=0, timeout=min(judge.config.timeout, 60)))
    result = asyncio.run(ping.complete([{"role": "user", "content": "Reply with OK."}]))
    return None if result.ok else f"judge {judge.endpoint} did not answer: {result.error}"


def cluster_resources(cfg: GRPOConfig) -> tuple[list[dict], str, str | None]:
    """(alive nodes as {"ip", "CPU", "GPU"}, where they came from, why the actors would not fit). Joins the
    cluster the run would use, as the run would."""
    import ray

    where = init_ray(cfg)
    if where.startswith("a local"):
        where += " (set RAY_ADDRESS or --ray_address to check a cluster)"
    try:
        nodes = [{"ip": n["NodeManagerAddress"], "CPU": n["Resources"].get("CPU", 0), "GPU": n["Resources"].get("GPU", 0)}
                 for n in ray.nodes() if n.get("Alive")]  # fmt: skip
        shortfall = resource_shortfall(cfg)
    finally:
        ray.shutdown()
    return nodes, where, shortfall


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def run(cfg: GRPOConfig, trainer) -> int:
    problems: list[str] = []
    judge_problem = check_judge(trainer)
    if judge_problem:
        problems.append(judge_problem)
    nodes, where, shortfall = cluster_resources(cfg)
    gpus = sum(n["GPU"] for n in nodes)
    on_gpu = gpus > 0
    need = required_resources(cfg, on_gpu)
    world = num_learners(cfg, on_gpu)
    engine_gpus = need["GPU"] - world if on_gpu else 0
    if shortfall:
        problems.append(f"{shortfall} ({where})")
    if not on_gpu and (sum(cfg.num_learners_per_node) > 1 or cfg.vllm_tensor_parallel_size > 1):
        problems.append(f"{where} has no GPU: the run would fall back to 1 CPU learner instead of "
                        f"{sum(cfg.num_learners_per_node)} (--num_learners_per_node {cfg.num_learners_per_node})")  # fmt: skip
    biggest = max((n["GPU"] for n in nodes), default=0)
    if on_gpu and cfg.vllm_tensor_parallel_size > biggest:
        problems.append(f"--vllm_tensor_parallel_size {cfg.vllm_tensor_parallel_size} exceeds the GPUs of any one node ({biggest:g})")

    shape = model_shape(cfg.model_name_or_path)
    per_rank = cfg.batch_size / world
    seq = cfg.max_prompt_token_length + cfg.response_length
    micro = math.ceil(per_rank / cfg.num_mini_batches / max(cfg.pack_length // seq, 1))
    mem = learner_memory(cfg, shape, world)
    device = gpu_memory()
    lines = [
        f"dry run: {cfg.exp_name} -> {cfg.output_dir}",
        f"  cluster    {where}: {len(nodes)} node(s), {sum(n['CPU'] for n in nodes):g} CPUs, {gpus:g} GPUs",
        f"  model      {cfg.model_name_or_path}: {_count(shape.params)} parameters, {shape.layers} layers, "
        f"vocab {shape.vocab}",
        f"  engines    {cfg.vllm_num_engines} vLLM engine(s) x TP {cfg.vllm_tensor_parallel_size}"
        + (f" = {engine_gpus} GPUs, one placement group each" if on_gpu else " on CPU"),
        f"  learners   {world} DeepSpeed learner(s), ZeRO-{cfg.deepspeed_stage}, one placement group (PACK), "
        + ("1 GPU each" if on_gpu else "on CPU with gloo"),
        f"  judge      {trainer.judge.endpoint if trainer.judge else 'none (no judge-based verifier)'}"
        + (" (answered)" if trainer.judge and not judge_problem else ""),
        f"  per step   {cfg.num_unique_prompts_rollout} prompts x {cfg.num_samples_per_prompt_rollout} samples = "
        f"{cfg.batch_size} samples; {per_rank:g} per learner, in {cfg.num_mini_batches} mini-batch(es), "
        f"up to {micro} micro-batch(es) of {cfg.pack_length} tokens (longest sample {seq})",
        f"  schedule   {cfg.num_training_steps} steps ({cfg.total_episodes} episodes), async_steps {cfg.async_steps}, "
        f"state every {cfg.checkpoint_state_freq or 'never'}, model every {cfg.save_freq or 'end'}",
        "  memory per learner GPU (rough): "
        + ", ".join(f"{k} {v / GiB:.1f} GiB" for k, v in mem.items() if v)
        + f"; total {sum(mem.values()) / GiB:.1f} GiB" + (f" of {device / GiB:.0f}" if device else ""),
        f"  memory per engine GPU: weights {2 * shape.params / cfg.vllm_tensor_parallel_size / GiB:.1f} GiB; KV cache "
        f"{shape.kv_bytes_per_token / 1024:.0f} KiB/token, {shape.kv_bytes_per_token * seq / GiB:.2f} GiB per full "
        f"sequence, in the rest of --vllm_gpu_memory_utilization {cfg.vllm_gpu_memory_utilization:g}",
    ]  # fmt: skip
    print("\n".join(lines))
    if device and sum(mem.values()) > device:
        print(f"  warning: the learner estimate exceeds one GPU's {device / GiB:.0f} GiB: consider --deepspeed_stage 3, "
              "--gradient_checkpointing or a smaller --pack_length")  # fmt: skip
    for p in problems:
        print(f"problem: {p}")
    print("dry run: " + ("ok, nothing was trained" if not problems else f"{len(problems)} problem(s)"))
    return 2 if problems else 0
