"""`python -m open_instruct.flip_eval`: FLIP against LLM-as-a-judge as reward models on RewardBench 2.

Every example is a prompt with chosen (correct) and rejected responses: most subsets pick the best of four.
Each --method judges every example with the same judge model:
  flip       each response scored by FLIP against the prompt (token F1 of the inferred instruction)
  pointwise  each response's 1-10 rating
  pairwise   the chosen response against each rejected one, in both orders (A/B swapped)
  listwise   all responses in one prompt, in a seeded random order; the judge picks the best
An example is correct when the chosen response scores strictly higher than every rejected one (flip,
pointwise), wins every comparison (pairwise), or is the pick (listwise). An answer that does not parse
counts against the chosen response (see --llm_judge_on_unparsed). An example with a failed judge call is reported as
failed, never as wrong, and left out of the accuracy.

Ties: flip and pointwise get RewardBench 2's own Ties score (accuracy on the ref and tied rows of each
prompt, and whether correct answers stand further from incorrect ones than from each other). Pairwise and
listwise give no scores, so that rule cannot apply: their Ties accuracy (every correct answer beats every
incorrect one; the pick is a correct answer) is reported apart and left out of their overall.

Scores: `official` is RewardBench 2's own score (a tie at the top earns partial credit, an example with no
verdict earns 1/N, every example counts), the headline; `accuracy` beside it is the strict rule above with
failed examples left out (open_instruct/evaluation/reward_bench.py states both).

Outputs in --output-dir: predictions.jsonl (every score and raw judge answer, one line per method and
example, appended as each finishes), results.json (per method: official score and accuracy per subset and
overall, the unweighted mean over subsets; n judged; failures), report.md with a table and accuracy.png, and
run_config.json. Rerunning with the same --output-dir resumes: examples already judged are skipped, failed
ones are judged again, and results are recomputed from every prediction in the directory. The dataset,
judge model and the settings that change answers (--llm_judge_max_tokens, --llm_judge_temperature,
--llm_judge_max_context_length, --llm_judge_on_unparsed, --llm_judge_enable_thinking,
--llm_judge_structured_output, --flip_echo_overlap_max, --seed) must match the directory's run_config.json.

Exit status: 0 when every example was judged, 1 when some examples failed (rerun to retry them), 2 for
bad flags or input (one line naming the file, row or flag), or a judge that cannot be reached at all.
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from open_instruct.cli_utils import UserError, run_command
from open_instruct.evaluation import reward_bench
from open_instruct.evaluation.best_of_n import VERIFIER_NAMES, score_candidates
from open_instruct.evaluation.report import write_report
from open_instruct.evaluation.reward_bench import METHODS, Example
from open_instruct.ground_truth_utils import ECHO_OVERLAP_MAX, build_verifier
from open_instruct.judge_config import add_judge_flags, judge_all, make_client, positive_int
from open_instruct.judge_utils import (
    extract_best_index,
    extract_preference,
    listwise_messages,
    pairwise_messages,
)

EXAMPLE = (
    "example:\n  python -m open_instruct.flip_eval --dataset allenai/reward-bench-2 --method flip pointwise pairwise "
    "listwise \\\n      --llm_judge_model hosted_vllm/Qwen/Qwen3-4B --llm_judge_api_base http://127.0.0.1:8000/v1 "
    "--output-dir runs/rb2-qwen3-4b"
)

# --------------------------------------------------------------------------------------------------
# Judging one example with one method


class ExampleJudge:
    """Judges (method, example) jobs into prediction records:
    {method, id, subset, num_chosen, status: correct | wrong | failed, scores (flip, pointwise), calls}.
    Each call in `calls` keeps the judge's raw answer and what was read from it."""

    def __init__(self, client, on_unparsed: str, seed: int, echo_overlap_max: float = ECHO_OVERLAP_MAX):
        self.client = client
        self.on_unparsed = on_unparsed
        self.seed = seed
        self.verifiers = {
            m: build_verifier(VERIFIER_NAMES[m], client, on_unparsed, echo_overlap_max)
            for m in VERIFIER_NAMES
        }

    async def __call__(self, job: tuple[str, Example]) -> dict:
        method, ex = job
        if method in self.verifiers:
            calls, correct = await self._scores(method, ex)
        elif method == "pairwise":
            calls, correct = await self._pairwise(ex)
        else:
            calls, correct = await self._listwise(ex)
        status = "failed" if any(c["failed"] for c in calls) else "correct" if correct else "wrong"
        record = {
            "method": method,
            "id": ex.id,
            "subset": ex.subset,
            "num_chosen": len(ex.chosen),
            "status": status,
        }
        if method in self.verifiers:
            record["scores"] = [c["score"] for c in calls]
        return {**record, "calls": calls}

    async def _scores(self, method: str, ex: Example) -> tuple[list[dict], bool]:
        messages = [{"role": "user", "content": ex.prompt}]
        results = await score_candidates(self.verifiers[method], messages, ex.responses)
        calls = [
            {
                "response": i,
                "score": r.score,
                "extracted": r.extracted,
                "judge_ok": r.judge_ok,
                "parsed": r.parsed,
                "failed": r.score is None,
                "error": r.error,
                "judge_output": r.judge_output,
            }
            for i, r in enumerate(results)
        ]
        scores = [r.score for r in results]
        return calls, None not in scores and reward_bench.scores_correct(scores, len(ex.chosen))

    async def _pairwise(self, ex: Example) -> tuple[list[dict], bool]:
        responses = ex.responses

        async def compare(i: int, j: int, chosen_as: str) -> dict:
            a, b = (responses[i], responses[j]) if chosen_as == "A" else (responses[j], responses[i])
            result = await self.client.judge(pairwise_messages, ex.prompt, a, b, judge_type="pairwise")
            verdict = extract_preference(result.text) if result.ok else None
            return {
                "chosen": i,
                "rejected": j,
                "chosen_as": chosen_as,
                "verdict": verdict,
                "chosen_won": verdict == chosen_as,
                **self._call(result, verdict is not None, "BETTER_RESPONSE"),
            }

        pairs = [
            (i, j, side)
            for i in range(len(ex.chosen))
            for j in range(len(ex.chosen), len(responses))
            for side in ("A", "B")
        ]
        calls = list(await asyncio.gather(*(compare(*p) for p in pairs)))
        return calls, all(c["chosen_won"] for c in calls)

    async def _listwise(self, ex: Example) -> tuple[list[dict], bool]:
        n = len(ex.responses)
        order = reward_bench.listwise_order(self.seed, ex.id, n)
        shown = [ex.responses[k] for k in order]
        result = await self.client.judge(
            lambda p, *rs: listwise_messages(p, list(rs)), ex.prompt, *shown, judge_type="listwise"
        )
        pick = extract_best_index(result.text) if result.ok else None
        picked = order[pick] if pick is not None and pick < n else None
        call = {
            "order": order,
            "pick": pick,
            "picked": picked,
            **self._call(result, picked is not None, f"BEST_RESPONSE_INDEX from 0 to {n - 1}"),
        }
        return [call], picked is not None and picked < len(ex.chosen)

    def _call(self, result, parsed: bool, key: str) -> dict:
        """A call's common fields. A judge that did not answer fails the call; an answer that does not parse
        fails it under --llm_judge_on_unparsed fail, and otherwise counts against the chosen response."""
        if not result.ok:
            return {
                "judge_ok": False,
                "parsed": False,
                "failed": True,
                "error": result.error,
                "judge_output": None,
            }
        return {
            "judge_ok": True,
            "parsed": parsed,
            "failed": not parsed and self.on_unparsed == "fail",
            "error": None if parsed else f"judge answer has no {key}",
            "judge_output": result.text,
        }


def first_error(record: dict) -> str | None:
    return next((c["error"] for c in record["calls"] if c["failed"]), None)


# --------------------------------------------------------------------------------------------------
# The output directory: run config, predictions, results


@dataclass(frozen=True)
class RunConfig:
    """What must stay the same for predictions in one output directory to be comparable."""

    dataset: str
    split: str
    judge_model: str
    judge_max_tokens: int
    judge_temperature: float
    judge_max_context_length: int
    on_unparsed: str
    seed: int
    echo_overlap_max: float
    judge_enable_thinking: bool | None = None  # a run saved before these settings existed had their defaults
    judge_structured_output: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunConfig":
        return cls(
            dataset=reward_bench.resolve_source(args.dataset),
            split=args.split,
            judge_model=args.llm_judge_model,
            judge_max_tokens=args.llm_judge_max_tokens,
            judge_temperature=args.llm_judge_temperature,
            judge_max_context_length=args.llm_judge_max_context_length,
            on_unparsed=args.llm_judge_on_unparsed,
            seed=args.seed,
            echo_overlap_max=args.flip_echo_overlap_max,
            judge_enable_thinking=args.llm_judge_enable_thinking,
            judge_structured_output=args.llm_judge_structured_output,
        )

    def check_or_save(self, path: Path) -> None:
        """Save it in a new directory; in one that holds a run, refuse settings that differ from it."""
        if not path.exists():
            path.write_text(json.dumps(asdict(self), indent=2) + "\n")
            return
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}: not valid JSON ({e.msg}); remove it or use another --output-dir"
            ) from None
        defaults = {f.name: f.default for f in fields(self) if f.default is not MISSING}
        differ = [
            f"{k} {saved.get(k, defaults.get(k))!r} (this run: {v!r})"
            for k, v in asdict(self).items()
            if saved.get(k, defaults.get(k)) != v
        ]
        if differ:
            raise UserError(
                f"{path}: this output dir holds a run with {'; '.join(differ)}; "
                "use another --output-dir, or the same settings to resume it"
            )


class Predictions:
    """predictions.jsonl: one record per judged (method, example), appended and flushed as each finishes,
    so an interrupted run loses only the examples in flight. The latest record of a key wins."""

    def __init__(self, path: Path):
        self.path = path
        self.latest: dict[tuple[str, str], dict] = {}
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = text.splitlines()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.latest[(record["method"], record["id"])] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                if lineno == len(lines) and not text.endswith("\n"):  # half-written by a killed run: drop it
                    path.write_text(text[: len(text) - len(line)], encoding="utf-8")
                    break
                raise UserError(
                    f"{path}:{lineno}: not a prediction record; remove the line or the file"
                ) from None
        else:
            if text and not text.endswith("\n"):
                with path.open("a", encoding="utf-8") as f:
                    f.write("\n")  # appends start on a line of their own

    def done(self, method: str, example_id: str) -> bool:
        record = self.latest.get((method, example_id))
        return record is not None and record["status"] != "failed"

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.latest[(record["method"], record["id"])] = record

    def methods(self) -> list[str]:
        present = {m for m, _ in self.latest}
        return [m for m in METHODS if m in present]

    def records(self, method: str) -> list[dict]:
        return [r for (m, _), r in self.latest.items() if m == method]


# --------------------------------------------------------------------------------------------------
# The command


def cmd_eval(args: argparse.Namespace) -> int:
    methods = list(dict.fromkeys(args.method or METHODS))
    config = RunConfig.from_args(args)
    examples = reward_bench.load_examples(args.dataset, args.split)
    examples = reward_bench.select(examples, args.subsets, args.limit, args.dataset)
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output-dir {out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    config.check_or_save(out_dir / "run_config.json")
    store = Predictions(out_dir / "predictions.jsonl")

    jobs = [(m, ex) for m in methods for ex in examples if not store.done(m, ex.id)]
    done = len(methods) * len(examples) - len(jobs)
    print(f"{len(examples)} examples x {len(methods)} methods: {done} judged before, {len(jobs)} to judge")
    start = time.perf_counter()
    client = None
    if jobs:
        client = make_client(args)
        judge = ExampleJudge(client, args.llm_judge_on_unparsed, args.seed, args.flip_echo_overlap_max)
        asyncio.run(
            judge_all(
                jobs,
                judge,
                client,
                first_error,
                "judging",
                unit="example",
                progress=not args.no_progress,
                on_done=store.append,
            )
        )
    seconds = time.perf_counter() - start

    results = [reward_bench.summarize(m, store.records(m)) for m in store.methods()]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = write_report(out_dir, results, asdict(config))
    print_summary(results, client, seconds, out_dir, report)
    failed = sum(store.latest[(m, ex.id)]["status"] == "failed" for m in methods for ex in examples)
    if failed:
        print(f"  {failed} examples failed; rerun the same command to judge them again", file=sys.stderr)
    return 1 if failed else 0


def print_summary(results: list[dict], client, seconds: float, out_dir: Path, report: Path) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    for r in results:
        apart = f", Ties apart {pct(r['ties_apart']['accuracy'])}" if "ties_apart" in r else ""
        print(
            f"  {r['method']:<9} RewardBench 2 score {pct(r['official']['overall'])}, "
            f"accuracy {pct(r['accuracy']['overall'])}{apart}  (n {r['n']}, "
            f"failures {r['failures']}, unparsed answers {r['unparsed']})"
        )
    if client is not None:
        s = client.stats
        print(
            f"  {seconds:.1f}s, judge calls {s.calls}, failed {s.failures}, retries {s.retries}, "
            f"truncated prompts {s.truncated}, tokens {s.prompt_tokens}+{s.completion_tokens}, cost ${s.cost:.4f}"
        )
    print(f"  {out_dir / 'results.json'}, {out_dir / 'predictions.jsonl'}, {report}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m open_instruct.flip_eval",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=reward_bench.HUB_ID,
        help=f"HF hub id or a local .json/.jsonl/.parquet file with RewardBench 2's columns: id, prompt, "
        f"chosen (list), rejected (list), subset, and optionally num_correct, num_incorrect, "
        f"total_completions (default {reward_bench.HUB_ID})",
    )
    p.add_argument("--split", default="test", help="split of a hub dataset (default test)")
    p.add_argument(
        "--method",
        nargs="+",
        action="extend",
        choices=METHODS,
        help="reward methods to compare; several at once allowed (default: all four)",
    )
    p.add_argument(
        "--output-dir",
        required=True,
        help="where predictions, results and the report go; rerun with it to resume",
    )
    p.add_argument(
        "--subsets",
        nargs="+",
        default=None,
        help="only these subsets, e.g. Focus 'Precise IF' (case-insensitive; default: all)",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="only the first N prompts of each subset (a Ties prompt's ref and tied rows count as one)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the order in which listwise shows responses (default 0)"
    )
    add_judge_flags(p)
    p.add_argument(
        "--llm_judge_on_unparsed",
        "--on-unparsed",
        choices=["raw", "fail"],
        default="raw",
        help="judge answered but nothing parsed: 'raw' (published recipe) counts it against the chosen "
        "response (FLIP scores F1 against the raw answer, a missing rating is 0, a missing verdict or "
        "pick loses); 'fail' fails the example",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: cmd_eval(args))


if __name__ == "__main__":
    sys.exit(main())
