"""`python -m open_instruct.flip`: FLIP on its own. `score` gives FLIP rewards for responses; `bon` picks
the best of several candidate responses per prompt with FLIP or a pointwise LLM judge. In Python,
`from open_instruct.flip import FlipReward` (flip_reward.py)."""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from open_instruct.cli_utils import UserError, run_command
from open_instruct.evaluation.best_of_n import VERIFIER_NAMES, select
from open_instruct.flip_reward import FlipResult, FlipReward

__all__ = ["FlipResult", "FlipReward", "main"]  # the Python API lives in flip_reward.py
from open_instruct.ground_truth_utils import build_verifier
from open_instruct.judge_config import add_judge_flags, judge_all, make_client, prompt_messages, read_jsonl

SCORE_DOC = """\
score: FLIP rewards for responses. Each input row holds a response and the instruction it answered, as
{"instruction", "response"} ("prompt" is read as "instruction") or {"messages", "response"} (chat turns
ending with the user turn; the last user message is the instruction and earlier turns are context for the
judge). The judge infers the instruction from the response; the reward is token F1 between the inferred
and the real instruction.

Exit status: 0 when every row was scored, 1 when some judge calls failed (those rows have
`reward: null`), 2 for bad flags or input, or a judge that cannot be reached at all.
"""

BON_DOC = """\
bon: best-of-N selection. Each input row holds a prompt ("prompt" or "instruction", a string, or
"messages", chat turns ending with the user turn) and "responses", a list of N candidates. Every candidate
is scored by each --method:
  flip       FLIP reward: token F1 between the instruction the judge infers from the candidate and the real one
  pointwise  the LLM judge's 1-10 rating of the candidate, divided by 10
Each output row is the input plus, under the method's name ("flip", "pointwise"): best_index,
best_response, scores (one per candidate; null where the judge call failed), extracted (the inferred
instruction, or the rating), judge_outputs and errors.

Ties: the highest score wins; among equal highest scores the earliest candidate (lowest index). A failed
candidate is passed over; a row where every candidate failed gets best_index and best_response null.

Exit status: 0 when every candidate was scored, 1 when some judge calls failed, 2 for bad flags or input,
or a judge that cannot be reached at all.
"""

SCORE_EXAMPLE = (
    "example:\n  python -m open_instruct.flip score --input rows.jsonl --output scored.jsonl \\\n"
    "      --llm_judge_model hosted_vllm/Qwen/Qwen3-4B --llm_judge_api_base http://127.0.0.1:8000/v1"
)
BON_EXAMPLE = (
    "example:\n  python -m open_instruct.flip bon --input candidates.jsonl --output best.jsonl \\\n"
    "      --method flip pointwise --llm_judge_model hosted_vllm/Qwen/Qwen3-4B --llm_judge_api_base http://127.0.0.1:8000/v1"
)

# --------------------------------------------------------------------------------------------------
# score


@dataclass
class Row:
    line: int
    data: dict
    messages: list[dict]
    response: str


def read_rows(path: Path) -> list[Row]:
    """Parse and validate every line before any judge call; errors name the file and line."""
    rows = []
    for lineno, data in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(data.get("response"), str):
            raise UserError(f"{where}: field 'response' is missing or not a string")
        rows.append(Row(lineno, data, prompt_messages(data, where), data["response"]))
    return rows


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


def refuse_overwriting_input(args: argparse.Namespace) -> None:
    """--output naming the --input file would destroy the input before it is read in full."""
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError(f"--output {args.output} is the --input file: write the scored rows to another file")


def cmd_score(args: argparse.Namespace) -> int:
    refuse_overwriting_input(args)
    rows = read_rows(Path(args.input))
    client = make_client(args)
    verifier = build_verifier(
        "general-flip", client, args.llm_judge_on_unparsed, echo_overlap_max=args.flip_echo_overlap_max
    )

    async def one(row: Row):
        return await verifier.async_call(row.messages, row.response, None)

    start = time.perf_counter()
    results = asyncio.run(
        judge_all(rows, one, client, lambda r: r.error, "FLIP scoring", progress=not args.no_progress)
    )
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
        f"  {len(rows) / seconds:.1f} rows/s, {seconds:.1f}s, judge calls {client.stats.calls} "
        f"(+{client.stats.deduplicated} identical prompts answered by them), retries {client.stats.retries}, "
        f"failovers {client.stats.failovers}, judge tokens {client.stats.prompt_tokens}+{client.stats.completion_tokens}, cost ${client.stats.cost:.4f}"
    )
    if failures:
        first_error = next(r.error for r in results if not r.judge_ok)
        print(f"  first failure: {first_error}", file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------------
# bon


@dataclass
class BonRow:
    line: int
    data: dict
    messages: list[dict]
    responses: list[str]


def read_bon_rows(path: Path, methods: list[str]) -> list[BonRow]:
    rows = []
    for lineno, data in read_jsonl(path):
        where = f"{path}:{lineno}"
        responses = data.get("responses")
        if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
            raise UserError(f"{where}: field 'responses' must be a non-empty list of strings")
        clash = [m for m in methods if m in data]
        if clash:
            raise UserError(f"{where}: field '{clash[0]}' would be overwritten by the {clash[0]} selection")
        rows.append(BonRow(lineno, data, prompt_messages(data, where), responses))
    return rows


def cmd_bon(args: argparse.Namespace) -> int:
    refuse_overwriting_input(args)
    methods = list(dict.fromkeys(args.method or ["flip"]))
    rows = read_bon_rows(Path(args.input), methods)
    client = make_client(args)
    verifiers = {
        m: build_verifier(VERIFIER_NAMES[m], client, args.llm_judge_on_unparsed, args.flip_echo_overlap_max)
        for m in methods
    }

    async def one(row: BonRow) -> dict:
        chosen = await asyncio.gather(*(select(verifiers[m], row.messages, row.responses) for m in methods))
        return dict(zip(methods, chosen, strict=True))

    def first_error(selections: dict) -> str | None:
        return next((r.error for s in selections.values() for r in s.results if not r.judge_ok), None)

    start = time.perf_counter()
    selections = asyncio.run(
        judge_all(rows, one, client, first_error, "best-of-N", progress=not args.no_progress)
    )
    seconds = time.perf_counter() - start

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row, chosen in zip(rows, selections, strict=True):
            line = {**row.data, **{m: s.to_json() for m, s in chosen.items()}}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")

    candidates = sum(len(r.responses) for r in rows)
    print(f"selected the best of {candidates} candidates in {len(rows)} rows -> {out} ({seconds:.1f}s)")
    for m in methods:
        results = [r for chosen in selections for r in chosen[m].results]
        best = [
            chosen[m].scores[chosen[m].best_index]
            for chosen in selections
            if chosen[m].best_index is not None
        ]
        mean = sum(best) / len(best) if best else float("nan")
        print(
            f"  {m}: mean best score {mean:.4f}, rows without a best {len(rows) - len(best)}, "
            f"judge failures {sum(not r.judge_ok for r in results)}, "
            f"unparsed answers {sum(r.judge_ok and not r.parsed for r in results)}"
        )
    if len(methods) > 1:
        same = sum(len({chosen[m].best_index for m in methods}) == 1 for chosen in selections)
        print(f"  {' and '.join(methods)} pick the same candidate in {same} of {len(rows)} rows")
    errors = [e for chosen in selections if (e := first_error(chosen))]
    if errors:
        print(f"  first failure: {errors[0]}", file=sys.stderr)
    return 1 if errors else 0


# --------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m open_instruct.flip",
        description="FLIP rewards: a judge infers the instruction behind each response; reward = token F1 "
        "between the inferred and the real instruction.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{SCORE_EXAMPLE}\n{BON_EXAMPLE}",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score = sub.add_parser(
        "score",
        help="score responses with FLIP",
        description=SCORE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SCORE_EXAMPLE,
    )
    score.add_argument(
        "--input", required=True, help="JSONL rows: {instruction, response} or {messages, response}"
    )
    score.add_argument("--output", required=True, help="JSONL output: each input row plus its reward fields")
    score.set_defaults(func=cmd_score)

    bon = sub.add_parser(
        "bon",
        help="pick the best of N responses per prompt (FLIP or pointwise judge)",
        description=BON_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=BON_EXAMPLE,
    )
    bon.add_argument(
        "--input", required=True, help="JSONL rows: {prompt | instruction | messages, responses: [...]}"
    )
    bon.add_argument(
        "--output", required=True, help="JSONL output: each input row plus the selection per method"
    )
    bon.add_argument(
        "--method",
        nargs="+",
        action="extend",
        choices=["flip", "pointwise"],
        help="how candidates are scored; several at once allowed (default: flip)",
    )
    bon.set_defaults(func=cmd_bon)

    score.add_argument(
        "--llm_judge_on_unparsed",
        "--on-unparsed",
        choices=["raw", "fail"],
        default="raw",
        help="judge answered but no instruction parsed: 'raw' scores F1 against the raw answer "
        "(published recipe, flagged parsed=false); 'fail' gives reward null",
    )
    bon.add_argument(
        "--llm_judge_on_unparsed",
        "--on-unparsed",
        choices=["raw", "fail"],
        default="raw",
        help="judge answered but nothing parsed: 'raw' (published recipe) scores FLIP's F1 against the "
        "raw answer and a missing rating as 0, flagged in errors; 'fail' leaves the candidate unscored",
    )
    for p in (score, bon):
        add_judge_flags(p)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
