"""What the commands that call a judge share (`flip score`, `flip bon`, `flip_eval`): the judge flags and
the client they configure, reading JSONL input rows, and running every item with a first call alone.
"""

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from open_instruct.cli_utils import UserError

T = TypeVar("T")
R = TypeVar("R")

# --------------------------------------------------------------------------------------------------
# Judge flags


def add_judge_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge-model", required=True,
                   help="litellm model id, e.g. hosted_vllm/Qwen/Qwen3-4B (a vLLM server) or openai/gpt-4o-mini")
    g.add_argument("--judge-api-base", default=None,
                   help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (default: $HOSTED_VLLM_API_BASE)")
    g.add_argument("--max-concurrency", type=positive_int, default=64, help="judge requests in flight (default 64)")
    g.add_argument("--timeout", type=_positive_float, default=120.0, help="seconds per judge request (default 120)")
    g.add_argument("--retries", type=_nonneg_int, default=3,
                   help="retries on timeouts, connection errors, 429 and 5xx, with backoff (default 3)")
    g.add_argument("--judge-max-tokens", type=positive_int, default=2048, help="most tokens the judge writes")
    g.add_argument("--judge-temperature", type=float, default=0.0, help="judge sampling temperature (default 0)")
    g.add_argument("--judge-max-context-length", type=positive_int, default=25000,
                   help="judge context window in tokens; longer responses are cut in the middle (default 25000)")
    # fmt: skip


def make_client(args: argparse.Namespace):
    """The JudgeClient that the judge flags describe."""
    from open_instruct.judge_client import JudgeClient, JudgeConfig  # litellm: slow import, kept off --help

    return JudgeClient(JudgeConfig(
        model=args.judge_model,
        api_base=args.judge_api_base,
        max_concurrency=args.max_concurrency,
        timeout=args.timeout,
        retries=args.retries,
        max_tokens=args.judge_max_tokens,
        temperature=args.judge_temperature,
        max_context_length=args.judge_max_context_length,
    ))  # fmt: skip


def positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


# --------------------------------------------------------------------------------------------------
# Input rows


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; errors name the file and line."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(data, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
            rows.append((lineno, data))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def prompt_messages(data: dict, where: str) -> list[dict]:
    """The prompt of an input row as chat turns: its `messages` (which need a user turn), else its
    `instruction` or `prompt` string as a single user turn (checked in that order)."""
    messages = data.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise UserError(f"{where}: field 'messages' must be a list of {{'role', 'content'}} strings")
        if not any(m["role"] == "user" for m in messages):
            raise UserError(f"{where}: field 'messages' has no user turn")
        return messages
    for key in ("instruction", "prompt"):
        if isinstance(data.get(key), str):
            return [{"role": "user", "content": data[key]}]
    raise UserError(f"{where}: needs 'instruction' (a string) or 'messages'")


# --------------------------------------------------------------------------------------------------
# Running


async def judge_all(
    items: list[T],
    one: Callable[[T], Awaitable[R]],
    client,
    first_error: Callable[[R], str | None],
    desc: str,
    unit: str = "row",
    progress: bool = True,
    on_done: Callable[[R], None] | None = None,
) -> list[R]:
    """`await one(item)` for every item; results in input order, `on_done` as each finishes. The first item
    goes alone: if the judge cannot be reached at all, stop there with one clear error instead of failing
    every item after its retries. The client's concurrency cap bounds the requests in flight."""
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    results: list[R | None] = [None] * len(items)

    def done(i: int, result: R) -> None:
        results[i] = result
        if on_done is not None:
            on_done(result)
        bar.update(1)

    async def run(i: int) -> None:
        done(i, await one(items[i]))

    try:
        if items:
            first = await one(items[0])
            if client.stats.unreachable:
                raise UserError(f"judge {client.endpoint} is unreachable: {first_error(first)}")
            done(0, first)
        await asyncio.gather(*(run(i) for i in range(1, len(items))))
    finally:
        bar.close()
    return results
