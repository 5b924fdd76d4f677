"""The learner: one DeepSpeed engine per GPU (gloo learners on CPU), run as Ray actors.

Each rank trains on its share of the step as packing.plan_step dealt it (the same number of micro-batches on
every rank, since the collectives of ZeRO-2/3 need every rank in every pass): response-token log-probabilities
(packing.token_logprobs), the GRPO loss (rl_utils.grpo_loss), gradients accumulated over the micro-batches
of a mini-batch, and one DeepSpeed step per mini-batch (ZeRO stage 2 or 3, gradient clipping, AdamW). Under
ZeRO-3 the model is partitioned as it loads. Weights leave the learner gathered one tensor at a time, for the
sync to the vLLM engines (weight_sync.py) and for HF checkpoints, which only rank 0 copies to host memory.
"""

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from open_instruct.packing import RankBatch, collate, token_logprobs
from open_instruct.rl_utils import LossConfig, grpo_loss


@dataclass
class LearnerConfig:
    model_name_or_path: str
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    total_steps: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    deepspeed_stage: int = 2
    gradient_checkpointing: bool = False
    pack_length: int = 4096
    per_device_train_batch_size: int = 1
    num_mini_batches: int = 1
    num_epochs: int = 1
    temperature: float = 1.0
    """the rollouts' sampling temperature: log-probs are of logits / temperature, as vLLM's are."""
    seed: int = 1
    backend_timeout: float = 1800.0
    """seconds a collective between learner ranks may wait for a peer before failing."""
    loss: LossConfig = field(default_factory=LossConfig)


def deepspeed_config(cfg: LearnerConfig, on_gpu: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,
        # Micro-batches vary in number (token packing): the accumulation boundary is set by hand each step.
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {
            "stage": cfg.deepspeed_stage,
            "overlap_comm": False,
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": on_gpu},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": cfg.weight_decay,
                "torch_adam": not on_gpu,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def reference_config(train_config: dict) -> dict:
    """DeepSpeed config of the frozen reference policy under ZeRO-3: partitioned, no optimizer."""
    return {
        k: train_config[k] for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16")
    } | {"zero_optimization": {"stage": 3}, "steps_per_print": 10**9}


def attention_implementation(on_gpu: bool) -> str:
    """flash-attention 2 on a GPU where it is installed, else PyTorch's SDPA: chosen by the hardware."""
    if on_gpu:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def jit_arch_list(value: str) -> str:
    """TORCH_CUDA_ARCH_LIST as DeepSpeed 0.19's JIT builder can parse it. It reads every entry as numbers,
    so an architecture-specific entry such as "9.0a" (CUDA images for Hopper set it) made the FusedAdam
    build fail on an H200 (benchmarks/learner_gpu.py); "9.0" builds FusedAdam for the same GPU."""
    return re.sub(r"(\d+\.\d+)[a-z]\b", r"\1", value)


def cpu_runtime_env(busy_cores: int = 0, learners_on_node: int = 1) -> dict:
    """Threads for a learner actor on a CPU-only node. Ray sets OMP_NUM_THREADS to the actor's num_cpus (1),
    a scheduling token; the learners' matmuls should use the node's cores, less `busy_cores`: those of
    engines generating the next step while they train (--async_steps > 0; each engine keeps Ray's one
    thread, its decode steps being bound by per-step overhead, not matmuls), split between the node's
    learners. A learner thread on an engine's core slowed the generation that bounds an async step more than
    it sped up training (benchmarks/grpo_step.py). PASSIVE: OpenMP threads sleep between parallel regions
    instead of spinning on shared cores."""
    threads = max(1, (len(os.sched_getaffinity(0)) - busy_cores) // max(1, learners_on_node))
    return {
        "env_vars": {
            "OMP_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        }
    }


def resident_bytes(params) -> int:
    """Bytes of parameter storage this process holds: a ZeRO-3 parameter holds only its partition."""
    return sum(
        p.ds_tensor.numel() * p.ds_tensor.element_size()
        if hasattr(p, "ds_tensor")
        else p.numel() * p.element_size()
        for p in params
    )


class PolicyLearner:
    """One data-parallel rank, as a Ray actor (cluster.Placement puts it in its node's bundle). The
    controller creates every rank, asks rank 0 for `rendezvous_address()` and calls `setup` on all with it."""

    def __init__(self, cfg: LearnerConfig, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if self.on_gpu else torch.device("cpu")

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0: its node's address and a free port there, where it will host the learners' TCP store."""
        from open_instruct.net_utils import rendezvous_address

        return rendezvous_address()

    def setup(self, master_addr: str, master_port: int) -> dict:
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

        # Ray shows each learner only its own GPU, so the local device is always cuda:0.
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
        )
        if self.on_gpu and "TORCH_CUDA_ARCH_LIST" in os.environ:  # before DeepSpeed JIT-builds FusedAdam
            os.environ["TORCH_CUDA_ARCH_LIST"] = jit_arch_list(os.environ["TORCH_CUDA_ARCH_LIST"])
        torch.manual_seed(self.cfg.seed + self.rank)
        # A peer that died must not leave this rank waiting in a collective forever.
        deepspeed.init_distributed(
            dist_backend="nccl" if self.on_gpu else "gloo",
            timeout=timedelta(seconds=self.cfg.backend_timeout),
        )
        dtype = torch.bfloat16 if self.on_gpu else torch.float32
        ds_config = deepspeed_config(self.cfg, self.on_gpu)
        attn = attention_implementation(self.on_gpu)
        zero3 = None
        if self.cfg.deepspeed_stage == 3:
            # While this object lives, from_pretrained builds a model under deepspeed.zero.Init: each parameter
            # is partitioned as it is created and rank 0 copies the checkpoint into it layer by layer, so no
            # rank ever holds the whole model. transformers keeps only a weak reference: dropping it after
            # loading leaves later from_config / save_pretrained calls in this process alone.
            from transformers.integrations import HfDeepSpeedConfig

            zero3 = HfDeepSpeedConfig(ds_config)
        model = AutoModelForCausalLM.from_pretrained(
            self.cfg.model_name_or_path, dtype=dtype, attn_implementation=attn
        )
        loaded_bytes = resident_bytes(model.parameters())
        num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        ref = None
        if self.cfg.loss.beta > 0:  # frozen reference policy for the KL term, partitioned like the policy
            ref = AutoModelForCausalLM.from_pretrained(
                self.cfg.model_name_or_path, dtype=dtype, attn_implementation=attn
            )
            ref.requires_grad_(False)
        del zero3
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        self.tokenizer = AutoTokenizer.from_pretrained(self.cfg.model_name_or_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        total_updates = self.cfg.total_steps * self.cfg.num_mini_batches * self.cfg.num_epochs

        def scheduler(optimizer):  # DeepSpeed steps it at every optimizer update
            return get_scheduler(
                self.cfg.lr_scheduler_type,
                optimizer,
                num_training_steps=total_updates,
                num_warmup_steps=int(self.cfg.warmup_ratio * total_updates),
            )

        self.model, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config,
            lr_scheduler=scheduler,
        )
        self.ref_model = None
        if ref is not None:
            if self.cfg.deepspeed_stage == 3:  # its forward gathers each layer in turn
                self.ref_model, *_ = deepspeed.initialize(model=ref, config=reference_config(ds_config))
            else:
                self.ref_model = ref.to(self.device)
            self.ref_model.eval()
        # Packed rows need variable-length attention to be cheap; with SDPA or eager attention a packed row
        # would attend over its whole length (masked), so micro-batches are padded rows instead.
        return {
            "rank": self.rank,
            "device": str(self.device),
            "params": num_params,
            "loaded_param_bytes": loaded_bytes,
            "rendezvous": f"{master_addr}:{master_port}",
            "packed_rows": attn == "flash_attention_2",
        }

    # ----------------------------------------------------------------------------------------------
    def train(self, batch: RankBatch) -> dict[str, float]:
        """One training step on this rank's share (from `plan_step`, which gives every rank the same number of
        micro-batches per mini-batch); DeepSpeed steps the optimizer once per mini-batch."""
        start = time.perf_counter()
        cfg = self.cfg
        self.model.train()
        totals: dict[str, float] = {
            "loss_sum": 0.0,
            "tokens": 0.0,
            "clipped_tokens": 0.0,
            "kl_sum": 0.0,
            "ratio_sum": 0.0,
            "grad_norm": 0.0,
            "updates": 0,
            "micro_batches": 0,
            "logprob_diff_sum": 0.0,
            "logprob_diff_max": 0.0,
        }
        reuse = (
            cfg.num_epochs > 1 or len(batch.micro_batches) > 1
        )  # later updates need the step's first policy
        old = self._old_logprobs(batch) if reuse else None
        for epoch in range(cfg.num_epochs):
            for m, (micros, mb_tokens) in enumerate(zip(batch.micro_batches, batch.num_tokens, strict=True)):
                for i, micro in enumerate(micros):
                    b = collate(micro, self.pad_id, self.device, batch.packed_rows)
                    logprobs = token_logprobs(self.model, b, cfg.temperature)
                    old_lp = old[m][i] if old is not None else logprobs.detach()
                    if epoch == 0:  # old_lp: this step's policy before any update
                        diff = (old_lp - b["vllm_logprobs"]).abs() * b["mask"]
                        totals["logprob_diff_sum"] += float(diff.sum())
                        totals["logprob_diff_max"] = max(totals["logprob_diff_max"], float(diff.max()))
                    ref_lp = None
                    if self.ref_model is not None:
                        with torch.no_grad():
                            ref_lp = token_logprobs(self.ref_model, b, cfg.temperature)
                    loss, stats = grpo_loss(
                        logprobs,
                        old_lp,
                        b["advantages"],
                        b["mask"],
                        cfg.loss,
                        mb_tokens,
                        vllm_logprobs=b["vllm_logprobs"],
                        ref_logprobs=ref_lp,
                    )
                    self.model.set_gradient_accumulation_boundary(i == len(micros) - 1)
                    self.model.backward(loss)
                    self.model.step()  # applies the update only at the boundary
                    totals["loss_sum"] += float(loss.detach()) * mb_tokens
                    totals["tokens"] += float(b["mask"].sum())
                    totals["micro_batches"] += 1
                    for k in ("clipped_tokens", "kl_sum", "ratio_sum"):
                        totals[k] += stats.get(k, 0.0)
                grad_norm = self.model.get_global_grad_norm()
                totals["grad_norm"] += float(grad_norm) if grad_norm is not None else 0.0
                totals["updates"] += 1
        totals["lr"] = float(self.model.get_lr()[0])
        totals["seconds"] = time.perf_counter() - start
        return totals

    @torch.no_grad()
    def _old_logprobs(self, batch: RankBatch) -> list[list[torch.Tensor]]:
        """Log-probs of the policy before this step's updates, for the ratio in later epochs/mini-batches."""
        self.model.eval()
        out = []
        for micros in batch.micro_batches:
            per_micro = []
            for micro in micros:
                b = collate(micro, self.pad_id, self.device, batch.packed_rows)
                per_micro.append(token_logprobs(self.model, b, self.cfg.temperature))
            out.append(per_micro)
        self.model.train()
        return out

    # ----------------------------------------------------------------------------------------------
    def named_weights(self, materialize: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) for every parameter. Under ZeRO-3 each one is gathered in turn, and every
        rank must iterate in step with the others (a gather is a collective). With `materialize=False` the
        tensor is the gathered buffer itself, valid only until the next item: what a rank that only takes
        part in the gathers, or copies each tensor at once, should ask for."""
        import deepspeed

        for name, param in self.model.module.named_parameters():
            if self.cfg.deepspeed_stage == 3:
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, (param.data.detach().clone() if materialize else param.data.detach())
            else:
                yield name, param.data.detach()

    def state_dict_cpu(self) -> dict[str, torch.Tensor] | None:
        """The full model on CPU, built on rank 0 only (under ZeRO-3 every rank must call this: the other ranks
        take part in the gathers and copy nothing)."""
        if self.rank != 0:
            for _ in self.named_weights(materialize=False):
                pass
            return None
        return {name: t.to("cpu", copy=True) for name, t in self.named_weights(materialize=False)}

    def save_model(self, path: str, chat_template: str | None = None) -> dict:
        """An HF checkpoint (safetensors, config, tokenizer with its chat template) at `path`, written by rank
        0. Returns the bytes of weights this rank copied to host memory to write it (0 on other ranks)."""
        state = self.state_dict_cpu()
        if state is None:
            return {"path": None, "host_bytes": 0}
        os.makedirs(path, exist_ok=True)
        self.model.module.save_pretrained(path, state_dict=state, safe_serialization=True)
        if chat_template is not None:
            self.tokenizer.chat_template = chat_template
        self.tokenizer.save_pretrained(path)
        return {"path": path, "host_bytes": sum(t.numel() * t.element_size() for t in state.values())}

    # ----------------------------------------------------------------------------------------------
    def save_state(self, path: str) -> None:
        """Model, optimizer, LR scheduler and this rank's torch RNG, as a DeepSpeed checkpoint under `path`
        (every rank calls this; each writes its own shards)."""
        self.model.save_checkpoint(
            path, tag="learner", client_state={"torch_rng": torch.get_rng_state()}, save_latest=False
        )

    def load_state(self, path: str) -> None:
        loaded, client = self.model.load_checkpoint(
            path, tag="learner", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if loaded is None:
            raise FileNotFoundError(f"no learner state under {path}")
        torch.set_rng_state(client["torch_rng"])

    def ping(self) -> bool:
        return True
