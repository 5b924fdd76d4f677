"""FLIP as a Python object, for notebooks and for other RL stacks: `FlipReward`.

    from open_instruct.flip import FlipReward

    flip = FlipReward(judge_model="hosted_vllm/Qwen/Qwen3-4B", api_base="http://127.0.0.1:8000/v1")
    results = flip.score(["Write a haiku about rain."], ["Grey clouds gather low..."])
    results[0].reward, results[0].inferred_instruction

It is the verifier the trainer and `flip score` use (ground_truth_utils, general-flip), with the same judge
settings and defaults (judge_client.JudgeConfig: `timeout`, `retries`, `max_concurrency`, `max_tokens`,
`max_context_length`, `temperature`, `api_key`) and the same guards. A judge call that fails gives
`reward=None` with `judge_ok=False`, never 0.0: leave such a sample out, do not train on it.

`score` is synchronous and works inside a running event loop too (a notebook: it then runs in a worker thread);
`await ascore(...)` is the same from async code. Both return one `FlipResult` per row, in order.
"""

import asyncio
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, fields

from open_instruct.ground_truth_utils import ECHO_OVERLAP_MAX, OnUnparsed, build_verifier
from open_instruct.judge_client import JudgeClient, JudgeConfig

Message = dict[str, str]
_SETTINGS = {f.name for f in fields(JudgeConfig)} - {"model", "api_base"}


@dataclass
class FlipResult:
    reward: float | None
    """Token F1 of the inferred instruction against the real one; None when the judge call failed (or, with
    on_unparsed="fail", when nothing parsed)."""
    precision: float | None
    recall: float | None
    inferred_instruction: str | None
    judge_ok: bool
    parsed: bool
    error: str | None
    judge_output: str | None


class FlipReward:
    def __init__(
        self,
        judge_model: str,
        api_base: str | list[str] | None = None,
        *,
        on_unparsed: OnUnparsed = "raw",
        echo_overlap_max: float = ECHO_OVERLAP_MAX,
        **judge_settings,
    ):
        """`judge_model` is a litellm id (`hosted_vllm/<served name>` for a vLLM server at `api_base`; a list,
        or commas, name several replicas of it); `judge_settings` are JudgeConfig's fields. Bad settings raise ValueError at once, before any call."""
        from open_instruct.judge_config import judge_problem

        if isinstance(api_base, list | tuple):
            api_base = ",".join(api_base)
        unknown = sorted(set(judge_settings) - _SETTINGS)
        if unknown:
            raise ValueError(f"unknown judge setting(s) {unknown}; known: {sorted(_SETTINGS)}")
        problem = judge_problem(judge_model, api_base)
        if problem:
            raise ValueError(
                problem.replace("--llm_judge_model ", "judge_model ").replace("--llm_judge_", "")
            )
        self.client = JudgeClient(JudgeConfig(judge_model, api_base=api_base, **judge_settings))
        self.verifier = build_verifier("general-flip", self.client, on_unparsed, echo_overlap_max)

    async def ascore(
        self,
        instructions: Sequence[str],
        responses: Sequence[str],
        contexts: Sequence[list[Message] | None] | None = None,
    ) -> list[FlipResult]:
        """One result per (instruction, response); `contexts[i]` are the chat turns before instruction i, shown
        to the judge as the conversation so far (None or [] for a single-turn prompt)."""
        if len(instructions) != len(responses) or (contexts is not None and len(contexts) != len(responses)):
            raise ValueError("instructions, responses (and contexts) must have the same length")
        contexts = contexts if contexts is not None else [None] * len(responses)

        async def one(instruction: str, response: str, context) -> FlipResult:
            messages = [*(context or []), {"role": "user", "content": instruction}]
            r = await self.verifier.async_call(messages, response, None)
            return FlipResult(
                reward=r.score,
                precision=r.details.get("precision"),
                recall=r.details.get("recall"),
                inferred_instruction=r.extracted,
                judge_ok=r.judge_ok,
                parsed=r.judge_ok and r.parsed,  # a judge that did not answer parsed nothing
                error=r.error,
                judge_output=r.judge_output,
            )

        return list(await asyncio.gather(*map(one, instructions, responses, contexts)))

    def score(
        self,
        instructions: Sequence[str],
        responses: Sequence[str],
        contexts: Sequence[list[Message] | None] | None = None,
    ) -> list[FlipResult]:
        """`ascore`, from synchronous code."""
        coro = self.ascore(instructions, responses, contexts)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a loop is running here (a notebook)
            return pool.submit(asyncio.run, coro).result()
