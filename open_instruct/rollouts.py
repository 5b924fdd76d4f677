"""One step's rollouts: generate across the vLLM engines and score each chunk as soon as it is back.

The step's prompts go to the engines in chunks (--rollout_chunks_per_engine per engine); a chunk's samples
are handed to the reward role the moment the chunk returns, so judging overlaps the generation of the rest.
Every generate call is seeded from (run seed, step, chunk), so a rerun or a resume draws the same samples from
the same weights. All of it runs on one event loop (`AsyncRunner`), shared with evaluation, so the judge
client and litellm see a single loop for the whole run.
"""

import asyncio
import math
import random
import threading
import time
from dataclasses import dataclass

from open_instruct.grpo_config import GRPOConfig


@dataclass
class Rollout:
    """One step's generated and scored samples, ready for the learners."""

    step: int
    prompts: list  # PromptRow, one per prompt
    completions: list[list[dict]]  # per prompt, n samples from vllm_utils, each with its weight_versions
    results: list[list]  # per prompt, n VerifierResults
    gen_seconds: float
    reward_seconds: float  # reward time not hidden behind generation
    sampler_state: dict  # the data position once this step's prompts were taken


async def rollout_and_score(
    engines, prompts: list, rewards, cfg: GRPOConfig, n: int, seed_key: str, on_generated=None
):
    """Generate n samples per prompt across the engines and score each chunk as soon as it is back;
    `on_generated()` is called once every chunk is back (the engines are free while the rest is judged).
    Returns (completions, results, generation seconds, exposed reward seconds)."""
    start = time.perf_counter()
    # With two chunks per engine, the first chunk's rewards run while the second one generates.
    chunk = max(1, math.ceil(len(prompts) / (cfg.rollout_chunks_per_engine * len(engines))))
    chunks = [list(range(i, min(i + chunk, len(prompts)))) for i in range(0, len(prompts), chunk)]

    async def generate(k: int, idx: list[int]):
        engine = engines[k % len(engines)]
        # Each generate call is seeded from the run seed, step and chunk: a rerun (or a resume) draws the
        # same samples from the same weights, and no two calls of a run share a random stream.
        seed = random.Random(f"{seed_key}/{k}").randrange(2**31)
        ref = engine.generate.remote(
            [prompts[i].prompt_token_ids for i in idx],
            n,
            cfg.temperature,
            cfg.response_length,
            cfg.stop_strings or None,
            seed,
        )
        return idx, await asyncio.wait_for(ref, timeout=cfg.backend_timeout * 60)

    completions: list = [None] * len(prompts)
    results: list = [[None] * n for _ in prompts]
    reward_tasks = []

    async def score(i: int, j: int):
        p, c = prompts[i], completions[i][j]
        results[i][j] = await rewards.score(
            p.dataset, p.messages, p.ground_truth, c["text"], c["finish_reason"]
        )

    for next_done in asyncio.as_completed([generate(k, idx) for k, idx in enumerate(chunks)]):
        idx, outs = await next_done
        for i, samples in zip(idx, outs, strict=True):
            completions[i] = samples
            reward_tasks += [asyncio.create_task(score(i, j)) for j in range(len(samples))]
    gen_done = time.perf_counter()
    if on_generated is not None:
        on_generated()
    await asyncio.gather(*reward_tasks)
    return completions, results, gen_done - start, time.perf_counter() - gen_done


class AsyncRunner:
    """One event loop in a background thread, shared by every rollout and eval coroutine of the run, so
    the judge client and litellm see a single loop for the whole run."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="reward-loop", daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        async def drain():  # cancel what is left (litellm's logging worker) before the loop goes
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.get_running_loop().shutdown_asyncgens()  # closes the judge's HTTP session

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
