"""The judge's settings, in one place. Every command that calls a judge (the trainer, `flip score`, `flip bon`,
`flip_eval`) takes the same flags, `--llm_judge_*` as in Open Instruct (the judge commands also accept their
older dashed names), with the same defaults (judge_client.JudgeConfig's), builds its client here, and has its
settings checked here before any row is scored. Also what the judge commands share: JSONL input rows, and
running every item with a first call alone.
"""

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from open_instruct.cli_utils import UserError, parse_bool
from open_instruct.ground_truth_utils import ECHO_OVERLAP_MAX
from open_instruct.judge_client import JudgeConfig

T = TypeVar("T")
R = TypeVar("R")


def positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {s}")
    return v


def positive_float(s: str) -> float:
    v = float(s)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


# --------------------------------------------------------------------------------------------------
# The flags


@dataclass(frozen=True)
class JudgeFlag:
    name: str  # the flag and the attribute, e.g. llm_judge_timeout
    field: (
        str | None
    )  # the JudgeConfig field it sets (and takes its default from); None: not a client setting
    help: str
    alias: str | None  # the dashed name the judge commands accepted first (flags added later have none)
    type: Callable[[str], Any] = str
    default: Any = None  # only for flags that are not JudgeConfig fields

    @property
    def default_value(self) -> Any:
        if self.field is None:
            return self.default
        f = next(f for f in fields(JudgeConfig) if f.name == self.field)
        return None if f.default is MISSING else f.default


JUDGE_FLAGS = [
    JudgeFlag(
        "llm_judge_model",
        "model",
        "litellm id of the judge, e.g. hosted_vllm/Qwen/Qwen3-4B (a vLLM server) or openai/gpt-4o-mini",
        "--judge-model",
    ),
    JudgeFlag(
        "llm_judge_api_base",
        "api_base",
        "the judge's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1, or several replicas of it "
        "separated by commas (least busy first, failover) (default: $HOSTED_VLLM_API_BASE)",
        "--judge-api-base",
    ),
    JudgeFlag("llm_judge_timeout", "timeout", "seconds per judge request", "--timeout", positive_float),
    JudgeFlag(
        "llm_judge_retries",
        "retries",
        "retries on timeouts, connection errors, 429 and 5xx, with backoff",
        "--retries",
        nonneg_int,
    ),
    JudgeFlag(
        "llm_judge_max_concurrency",
        "max_concurrency",
        "judge requests in flight, per replica",
        "--max-concurrency",
        positive_int,
    ),
    JudgeFlag(
        "llm_judge_endpoint_cooldown",
        "endpoint_cooldown",
        "seconds a judge replica whose request failed stays out of rotation (with several api bases)",
        None,
        positive_float,
    ),
    JudgeFlag(
        "llm_judge_max_tokens",
        "max_tokens",
        "most tokens the judge writes",
        "--judge-max-tokens",
        positive_int,
    ),
    JudgeFlag(
        "llm_judge_max_context_length",
        "max_context_length",
        "the judge's context window in tokens; longer responses are cut in the middle",
        "--judge-max-context-length",
        positive_int,
    ),
    JudgeFlag(
        "llm_judge_temperature",
        "temperature",
        "the judge's sampling temperature",
        "--judge-temperature",
        float,
    ),
    JudgeFlag(
        "llm_judge_enable_thinking",
        "enable_thinking",
        "true or false: sent to the judge's chat template as enable_thinking with every request (vLLM); unset, "
        "nothing is sent and a Qwen3 judge thinks, as in the published recipe; an answer cut off inside its "
        "reasoning is unparsed and not rewarded",
        None,
        parse_bool,
    ),
    JudgeFlag(
        "llm_judge_structured_output",
        "structured_output",
        "true or false: ask the judge server for the judge type's JSON (a JSON schema in response_format, "
        "vLLM's structured outputs), so every answer that ends within the token limit parses",
        None,
        parse_bool,
    ),
    JudgeFlag(
        "flip_echo_overlap_max",
        None,
        "FLIP gives 0 to a response that restates the instruction: at least this share of the instruction's "
        "word pairs in it (1.0 = only a full restatement; above 1 = off)",
        "--echo-overlap-max",
        positive_float,
        ECHO_OVERLAP_MAX,
    ),
]
BY_NAME = {f.name: f for f in JUDGE_FLAGS}


def add_judge_flags(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    """The judge flags of the judge commands: `--llm_judge_*`, each also under its dashed alias."""
    g = p.add_argument_group("judge")
    for f in JUDGE_FLAGS:
        default = f.default_value
        shown = (
            ""
            if default is None
            else f" (default {default:g})"
            if isinstance(default, float)
            else f" (default {default})"
        )
        required = model_required and f.name == "llm_judge_model"
        g.add_argument(
            f"--{f.name}",
            *([f.alias] if f.alias else []),
            dest=f.name,
            type=f.type,
            default=default,
            required=required,
            help=f.help + (" (required)" if required else shown),
        )


def judge_config(settings: Any) -> JudgeConfig:
    """The client settings that an argparse namespace or a GRPOConfig (anything with the llm_judge_* names)
    describes."""
    return JudgeConfig(**{f.field: getattr(settings, f.name) for f in JUDGE_FLAGS if f.field})


def judge_problem(model: str, api_base: str | None) -> str | None:
    """Why these settings cannot reach a judge, found before any call: a litellm id without a provider, or a
    hosted vLLM judge with no address (litellm would otherwise try api.openai.com)."""
    import litellm  # slow import; only when a judge is about to be used

    from open_instruct.judge_endpoints import parse_api_bases

    try:
        parse_api_bases(api_base)
    except ValueError as e:
        return f"--llm_judge_api_base: {e}"
    provider = model.split("/", 1)[0] if "/" in model else ""
    if provider not in litellm.provider_list:
        return (
            f"--llm_judge_model {model}: not a litellm id (provider/model); for a judge served by vLLM write "
            f"hosted_vllm/{model}"
        )
    if provider == "hosted_vllm" and not (api_base or os.environ.get("HOSTED_VLLM_API_BASE")):
        return (
            f"--llm_judge_model {model}: no address for the judge: set --llm_judge_api_base "
            "(e.g. http://127.0.0.1:8000/v1) or HOSTED_VLLM_API_BASE"
        )
    return None


def make_client(args: argparse.Namespace):
    """The JudgeClient that the judge flags describe, once they are checked (a UserError otherwise)."""
    from open_instruct.judge_client import JudgeClient

    problem = judge_problem(args.llm_judge_model, args.llm_judge_api_base)
    if problem:
        raise UserError(problem)
    return JudgeClient(judge_config(args))


# --------------------------------------------------------------------------------------------------
# Input rows


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a command's input; errors name FILE:LINE."""
    from open_instruct.dataset_utils import DatasetError
    from open_instruct.dataset_utils import read_jsonl as read_lines

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        rows = read_lines(path)
    except DatasetError as e:
        raise UserError(str(e)) from None
    for lineno, data in rows:
        if not isinstance(data, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
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
