"""`python -m open_instruct.flip score`: FLIP rewards for responses, on their own.

Each input row holds a response and the instruction it answered, either as `{"instruction", "response"}`
or as `{"messages", "response"}` (chat turns ending with the user turn; the last user message is the
instruction and earlier turns are context for the judge). The judge infers the instruction from the
response; the reward is token F1 between the inferred and the real instruction.

Exit status: 0 when every row was scored, 1 when some judge calls failed (those rows have
`reward: null`), 2 for bad flags or input, or a judge that cannot be reached at all.
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from open_instruct.cli_utils import UserError, run_command

EXAMPLE = (
    "example:\n  python -m open_instruct.flip score --input rows.jsonl --output scored.jsonl \\\n"
    "      --judge-model hosted_vllm/Qwen/Qwen3-4B --judge-api-base http://127.0.0.1:8000/v1"
)


@dataclass
class Row:
    line: int
    data: dict
    messages: list[dict] | None
    instruction: str | None
    response: str


def read_rows(path: Path) -> list[Row]:
    """Parse and validate every line before any judge call; errors name the file and line."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(data, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")
            rows.append(_validate(data, where, lineno))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _validate(data: dict, where: str, lineno: int) -> Row:
    response = data.get("response")
    if not isinstance(response, str):
        raise UserError(f"{where}: field 'response' is missing or not a string")
    messages, instruction = data.get("messages"), data.get("instruction")
    if messages is not None:
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise UserError(f"{where}: field 'messages' must be a list of {{'role', 'content'}} strings")
        if not any(m["role"] == "user" for m in messages):
            raise UserError(f"{where}: field 'messages' has no user turn")
        return Row(lineno, data, messages, None, response)
    if not isinstance(instruction, str):
        raise UserError(f"{where}: needs 'instruction' (a string) or 'messages'")
    return Row(lineno, data, None, instruction, response)


def output_row(row: Row, result) -> dict:
    return {
        **row.data,
        "inferred_instruction": result.extracted,
        "reward": result.score,
        "precision": result.details.get("precision"),
        "recall": result.details.get("recall"),
        "judge_ok": result.judge_ok,
        "parsed": result.parsed,
        "error": result.error,
        "judge_output": result.judge_output,
    }


async def score_rows(rows: list[Row], verifier, client, progress: bool = True) -> list:
    """Score every row, in input order. The first row goes alone: if the judge cannot be reached at all,
    stop there with one clear error instead of failing every row after its retries."""

    async def one(row: Row):
        return await verifier.async_call(row.messages, row.response, row.instruction)

    bar = tqdm(total=len(rows), desc="FLIP scoring", unit="row", disable=not progress, dynamic_ncols=True)
    first = await one(rows[0])
    if not first.judge_ok and client.stats.unreachable:
        bar.close()
        raise UserError(f"judge {client.endpoint} is unreachable: {first.error}")
    bar.update(1)
    results = [first] + [None] * (len(rows) - 1)

    async def indexed(i: int):
        results[i] = await one(rows[i])
        bar.update(1)

    await asyncio.gather(*(indexed(i) for i in range(1, len(rows))))
    bar.close()
    return results


def cmd_score(args: argparse.Namespace) -> int:
    from open_instruct.ground_truth_utils import build_verifier
    from open_instruct.judge_client import JudgeClient, JudgeConfig

    rows = read_rows(Path(args.input))
    config = JudgeConfig(
        model=args.judge_model,
        api_base=args.judge_api_base,
        max_concurrency=args.max_concurrency,
        timeout=args.timeout,
        retries=args.retries,
        max_tokens=args.judge_max_tokens,
        temperature=args.judge_temperature,
        max_context_length=args.judge_max_context_length,
    )
    client = JudgeClient(config)
    verifier = build_verifier("general-flip", client, on_unparsed=args.on_unparsed)
    start = time.perf_counter()
    results = asyncio.run(score_rows(rows, verifier, client, progress=not args.no_progress))
    seconds = time.perf_counter() - start

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row, result in zip(rows, results, strict=True):
            f.write(json.dumps(output_row(row, result), ensure_ascii=False) + "\n")

    rewards = [r.score for r in results if r.score is not None]
    failures = sum(not r.judge_ok for r in results)
    unparsed = sum(r.judge_ok and not r.parsed for r in results)
    mean = sum(rewards) / len(rewards) if rewards else float("nan")
    print(
        f"scored {len(rows)} rows -> {out}\n"
        f"  mean reward {mean:.4f} over {len(rewards)} rewarded rows\n"
        f"  judge failures {failures}, unparsed answers {unparsed}, truncated prompts {client.stats.truncated}\n"
        f"  {len(rows) / seconds:.1f} rows/s, {seconds:.1f}s, retries {client.stats.retries}, "
        f"judge tokens {client.stats.prompt_tokens}+{client.stats.completion_tokens}, cost ${client.stats.cost:.4f}"
    )
    if failures:
        first_error = next(r.error for r in results if not r.judge_ok)
        print(f"  first failure: {first_error}", file=sys.stderr)
    return 1 if failures else 0


def add_judge_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge")
    g.add_argument("--judge-model", required=True,
                   help="litellm model id, e.g. hosted_vllm/Qwen/Qwen3-4B (a vLLM server) or openai/gpt-4o-mini")
    g.add_argument("--judge-api-base", default=None,
                   help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (default: $HOSTED_VLLM_API_BASE)")
    g.add_argument("--max-concurrency", type=_positive_int, default=64, help="judge requests in flight (default 64)")
    g.add_argument("--timeout", type=_positive_float, default=120.0, help="seconds per judge request (default 120)")
    g.add_argument("--retries", type=_nonneg_int, default=3,
                   help="retries on timeouts, connection errors, 429 and 5xx, with backoff (default 3)")
    g.add_argument("--judge-max-tokens", type=_positive_int, default=2048, help="most tokens the judge writes")
    g.add_argument("--judge-temperature", type=float, default=0.0, help="judge sampling temperature (default 0)")
    g.add_argument("--judge-max-context-length", type=_positive_int, default=25000,
                   help="judge context window in tokens; longer responses are cut in the middle (default 25000)")
    # fmt: skip


def _positive_int(s: str) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m open_instruct.flip",
        description="FLIP rewards: a judge infers the instruction behind each response; reward = token F1 "
        "between the inferred and the real instruction.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score = sub.add_parser(
        "score",
        help="score responses with FLIP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
    )
    score.add_argument("--input", required=True, help="JSONL rows: {instruction, response} or {messages, response}")
    score.add_argument("--output", required=True, help="JSONL output: each input row plus its reward fields")
    add_judge_flags(score)
    score.add_argument("--on-unparsed", choices=["raw", "fail"], default="raw",
                       help="judge answered but no instruction parsed: 'raw' scores F1 against the raw answer "
                       "(published recipe, flagged parsed=false); 'fail' gives reward null")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=cmd_score)
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
