"""The learner: one DeepSpeed engine per GPU (one on gloo on a CPU machine), run as Ray actors.

Each learner holds a data-parallel shard of the step's samples. For every mini-batch it packs the samples
into micro-batches of at most `pack_length` tokens (padded to the longest sequence in the micro-batch, so
any attention implementation is exact), computes response-token log-probabilities, the GRPO loss
(rl_utils.grpo_loss) and accumulates gradients; DeepSpeed steps once per mini-batch (ZeRO stage 2 or 3,
gradient clipping, AdamW). Weights leave the learner already gathered, one tensor at a time, for the sync
to the vLLM engines and for HF-format checkpoints.
"""

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.nn.functional as F

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
    seed: int = 1
    backend_timeout: float = 1800.0
    """seconds a collective between learner ranks may wait for a peer before failing."""
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class Sample:
    query_ids: list[int]
    response_ids: list[int]
    vllm_logprobs: list[float]
    advantage: float


def pack(samples: list[Sample], pack_length: int) -> list[list[Sample]]:
    """Greedy first-fit, longest first: bins of samples whose total tokens fit in `pack_length`
    (a sample longer than that gets a bin of its own)."""
    bins: list[list[Sample]] = []
    room: list[int] = []
    for s in sorted(samples, key=lambda s: -(len(s.query_ids) + len(s.response_ids))):
        n = len(s.query_ids) + len(s.response_ids)
        for i, r in enumerate(room):
            if n <= r:
                bins[i].append(s)
                room[i] -= n
                break
        else:
            bins.append([s])
            room.append(pack_length - n)
    return bins


def collate(samples: list[Sample], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded tensors. `mask[b, t]` marks positions whose next token is a response token; the
    per-token tensors are aligned with logits[:, :-1] (position t predicts token t + 1)."""
    length = max(len(s.query_ids) + len(s.response_ids) for s in samples)
    B = len(samples)
    input_ids = torch.full((B, length), pad_id, dtype=torch.long)
    attention = torch.zeros((B, length), dtype=torch.long)
    mask = torch.zeros((B, length - 1), dtype=torch.float32)
    vllm_lp = torch.zeros((B, length - 1), dtype=torch.float32)
    for b, s in enumerate(samples):
        ids = s.query_ids + s.response_ids
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        q, r = len(s.query_ids), len(s.response_ids)
        mask[b, q - 1 : q - 1 + r] = 1.0
        vllm_lp[b, q - 1 : q - 1 + r] = torch.tensor(s.vllm_logprobs[:r], dtype=torch.float32)
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    out = dict(input_ids=input_ids, attention_mask=attention, mask=mask, vllm_logprobs=vllm_lp, advantages=advantages)
    return {k: v.to(device) for k, v in out.items()}


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) for every position, [B, T-1], in float32."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    return -F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")


def deepspeed_config(cfg: LearnerConfig, on_gpu: bool) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,
        # Micro-batches vary in number (token packing): the accumulation boundary is set by hand each step.
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {"stage": cfg.deepspeed_stage, "overlap_comm": False, "contiguous_gradients": True},
        "bf16": {"enabled": on_gpu},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": cfg.learning_rate, "betas": [0.9, 0.999], "eps": 1e-8,
                       "weight_decay": cfg.weight_decay, "torch_adam": not on_gpu},
        },  # fmt: skip
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


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


def cpu_runtime_env(busy_cores: int = 0) -> dict:
    """Threads for a learner actor on a CPU-only node. Ray sets OMP_NUM_THREADS to the actor's num_cpus (1),
    a scheduling token; the learner's matmuls should use the node's cores, less `busy_cores`: those of
    engines generating the next step while it trains (--async_steps > 0; each engine keeps Ray's one thread,
    its decode steps being bound by per-step overhead, not matmuls). A learner thread on an engine's core
    slowed the generation that bounds an async step more than it sped up training (benchmarks/grpo_step.py).
    PASSIVE: OpenMP threads sleep between parallel regions instead of spinning on shared cores."""
    threads = max(1, len(os.sched_getaffinity(0)) - busy_cores)
    return {"env_vars": {"OMP_NUM_THREADS": str(threads),
                         "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}  # fmt: skip


class PolicyLearner:
    """One data-parallel rank. Created as a Ray actor by the controller (see `create_learners`)."""

    def __init__(self, cfg: LearnerConfig, rank: int, world_size: int, master_addr: str, master_port: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0")  # fmt: skip
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if self.on_gpu else torch.device("cpu")

    def setup(self) -> dict:
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

        if self.on_gpu and "TORCH_CUDA_ARCH_LIST" in os.environ:  # before DeepSpeed JIT-builds FusedAdam
            os.environ["TORCH_CUDA_ARCH_LIST"] = jit_arch_list(os.environ["TORCH_CUDA_ARCH_LIST"])
        torch.manual_seed(self.cfg.seed + self.rank)
        # A peer that died must not leave this rank waiting in a collective forever.
        deepspeed.init_distributed(dist_backend="nccl" if self.on_gpu else "gloo",
                                   timeout=timedelta(seconds=self.cfg.backend_timeout))  # fmt: skip
        dtype = torch.bfloat16 if self.on_gpu else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.cfg.model_name_or_path, dtype=dtype,
                                                     attn_implementation=attention_implementation(self.on_gpu))  # fmt: skip
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        self.tokenizer = AutoTokenizer.from_pretrained(self.cfg.model_name_or_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        total_updates = self.cfg.total_steps * self.cfg.num_mini_batches * self.cfg.num_epochs

        def scheduler(optimizer):  # DeepSpeed steps it at every optimizer update
            return get_scheduler(self.cfg.lr_scheduler_type, optimizer, num_training_steps=total_updates,
                                 num_warmup_steps=int(self.cfg.warmup_ratio * total_updates))  # fmt: skip

        num_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
        self.model, *_ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(self.cfg, self.on_gpu), lr_scheduler=scheduler,
        )  # fmt: skip
        self.ref_model = None
        if self.cfg.loss.beta > 0:  # frozen reference policy for the KL term
            self.ref_model = AutoModelForCausalLM.from_pretrained(self.cfg.model_name_or_path, dtype=dtype,
                                                                  attn_implementation=model.config._attn_implementation)  # fmt: skip
            self.ref_model.to(self.device).eval().requires_grad_(False)
        return {"rank": self.rank, "device": str(self.device), "params": num_params}

    # ----------------------------------------------------------------------------------------------
    def train(self, samples: list[Sample], num_tokens: float) -> dict[str, float]:
        """One training step on this rank's shard. `num_tokens` is the step's response-token count over
        all ranks divided by the number of ranks (DeepSpeed averages gradients across ranks), so the loss
        is the token-level mean over the whole step."""
        start = time.perf_counter()
        cfg = self.cfg
        self.model.train()
        minibatches = [samples[i :: cfg.num_mini_batches] for i in range(cfg.num_mini_batches)]
        totals: dict[str, float] = {"loss_sum": 0.0, "tokens": 0.0, "clipped_tokens": 0.0, "kl_sum": 0.0,
                                    "ratio_sum": 0.0, "grad_norm": 0.0, "updates": 0}  # fmt: skip
        old = self._old_logprobs(minibatches) if cfg.num_epochs > 1 or cfg.num_mini_batches > 1 else None
        for _ in range(cfg.num_epochs):
            for mb_index, minibatch in enumerate(minibatches):
                bins = pack(minibatch, cfg.pack_length)
                mb_tokens = num_tokens / cfg.num_mini_batches
                for i, micro in enumerate(bins):
                    batch = collate(micro, self.pad_id, self.device)
                    logprobs = token_logprobs(self.model, batch["input_ids"], batch["attention_mask"])
                    old_lp = old[mb_index][i] if old is not None else logprobs.detach()
                    ref_lp = None
                    if self.ref_model is not None:
                        with torch.no_grad():
                            ref_lp = token_logprobs(self.ref_model, batch["input_ids"], batch["attention_mask"])
                    loss, stats = grpo_loss(logprobs, old_lp, batch["advantages"], batch["mask"], cfg.loss,
                                            mb_tokens, vllm_logprobs=batch["vllm_logprobs"], ref_logprobs=ref_lp)  # fmt: skip
                    self.model.set_gradient_accumulation_boundary(i == len(bins) - 1)
                    self.model.backward(loss)
                    self.model.step()  # applies the update only at the boundary
                    totals["loss_sum"] += float(loss.detach()) * mb_tokens
                    totals["tokens"] += float(batch["mask"].sum())
                    for k in ("clipped_tokens", "kl_sum", "ratio_sum"):
                        totals[k] += stats.get(k, 0.0)
                grad_norm = self.model.get_global_grad_norm()
                totals["grad_norm"] += float(grad_norm) if grad_norm is not None else 0.0
                totals["updates"] += 1
        totals["lr"] = float(self.model.get_lr()[0])
        totals["seconds"] = time.perf_counter() - start
        return totals

    @torch.no_grad()
    def _old_logprobs(self, minibatches: list[list[Sample]]) -> list[list[torch.Tensor]]:
        """Log-probs of the policy before this step's updates, for the ratio in later epochs/mini-batches."""
        self.model.eval()
        out = []
        for minibatch in minibatches:
            per_bin = []
            for micro in pack(minibatch, self.cfg.pack_length):
                batch = collate(micro, self.pad_id, self.device)
                per_bin.append(token_logprobs(self.model, batch["input_ids"], batch["attention_mask"]))
            out.append(per_bin)
        self.model.train()
        return out

    # ----------------------------------------------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) for every parameter, gathered one at a time under ZeRO-3."""
        import deepspeed

        for name, param in self.model.module.named_parameters():
            if self.cfg.deepspeed_stage == 3:
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    yield name, param.data.detach().clone()
            else:
                yield name, param.data.detach()

    def state_dict_cpu(self) -> dict[str, torch.Tensor] | None:
        """The full model on CPU (rank 0 only; every rank must call this under ZeRO-3)."""
        state = {name: t.to("cpu", copy=True) for name, t in self.named_weights()}
        return state if self.rank == 0 else None

    def save_model(self, path: str, chat_template: str | None = None) -> str | None:
        """An HF checkpoint (safetensors, config, tokenizer with its chat template) at `path`."""
        state = self.state_dict_cpu()
        if self.rank != 0:
            return None
        os.makedirs(path, exist_ok=True)
        self.model.module.save_pretrained(path, state_dict=state, safe_serialization=True)
        if chat_template is not None:
            self.tokenizer.chat_template = chat_template
        self.tokenizer.save_pretrained(path)
        return path

    # ----------------------------------------------------------------------------------------------
    def save_state(self, path: str) -> None:
        """Model, optimizer, LR scheduler and this rank's torch RNG, as a DeepSpeed checkpoint under `path`
        (every rank calls this; each writes its own shards)."""
        self.model.save_checkpoint(path, tag="learner", client_state={"torch_rng": torch.get_rng_state()},
                                   save_latest=False)  # fmt: skip

    def load_state(self, path: str) -> None:
        loaded, client = self.model.load_checkpoint(path, tag="learner", load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)  # fmt: skip
        if loaded is None:
            raise FileNotFoundError(f"no learner state under {path}")
        torch.set_rng_state(client["torch_rng"])

    def ping(self) -> bool:
        return True
