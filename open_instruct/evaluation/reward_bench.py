"""RewardBench 2 examples, and how each reward-model method is scored on them.

A row, in the layout of `allenai/reward-bench-2` (split `test`) or a local .json/.jsonl/.parquet file:

    id        string (or int); unique. In the Ties subset "ref:<n>" or "tied:<n>" (see below)
    prompt    string
    chosen    list of strings: the correct responses (one in most subsets, several in Ties)
    rejected  list of strings: the incorrect responses (three in most subsets)
    subset    string: Factuality, Precise IF, Math, Safety, Focus, Ties
    num_correct, num_incorrect, total_completions
              optional counts; when present they must match the lists

When an example is correct:
    flip, pointwise  every chosen response scores strictly higher than every rejected one
    pairwise         every chosen response beats every rejected one, judged in both orders (A/B swapped),
                     so a judge that always prefers one position loses
    listwise         the judge's pick, from all responses shown in a seeded random order, is a chosen one
An answer that does not parse counts against the chosen response (it is a lost comparison, or no pick).
That is `accuracy`; an example whose judge call failed is left out of it.

`official` is the score RewardBench 2's own code gives (allenai/reward-bench, run_generative_v2.py and
utils.py), the one its leaderboard and the FLIP paper report. For a best-of-N example:
    flip, pointwise  1 / (number of responses tied at the top score) when the chosen response is among them,
                     else 0: a tie at the top earns partial credit
    listwise         1 when the pick is the chosen response, 0 for another
    pairwise         1 when the chosen response wins every comparison, else 0 (not one of its methods)
and 1 / N (0.25 for four responses), "effectively a tie", when the verdict cannot be had: a pointwise or
listwise answer that does not parse, or a judge call that failed. Every example counts.

Ties, RewardBench 2's own rule (for the score-based methods, flip and pointwise). Each Ties prompt n has
two rows: "ref:n" with one correct answer and "tied:n" with several equally correct ones, both with
incorrect answers. Per row: accurate = worst correct score > best incorrect score; gap = worst correct -
best incorrect; spread = best correct - worst correct. Over the prompts that have both rows:
    score = 0.30 * accuracy over tied rows + 0.30 * accuracy over ref rows
          + 0.20 * share of prompts whose tied gap > tied spread
          + 0.20 * share of prompts whose min(ref gap, tied gap) > tied spread
          + 0.01 * mean of tanh(min(ref gap, tied gap) / tied spread - 1)   (0/0 counts 0)
so it rewards ranking every correct answer above every incorrect one by more than the correct answers
differ among themselves (the margin term lets it reach 1.01). Pairwise and listwise give no scores, so this rule cannot apply to them: their
Ties examples are judged by the rules above (every correct answer beats every incorrect one; the pick is
a correct answer), and that accuracy is reported apart (`ties_apart`), not in their overall.
"""

import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from open_instruct.cli_utils import UserError

HUB_ID = "allenai/reward-bench-2"
SUBSET_ORDER = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")
SCORE_METHODS = ("flip", "pointwise")  # a score per response: the Ties rule applies
RANK_METHODS = ("pairwise", "listwise")  # a verdict only: Ties reported apart
METHODS = SCORE_METHODS + RANK_METHODS
_TIES_ID = re.compile(r"^(ref|tied):(.+)$")


def is_ties(subset: str) -> bool:
    return subset.strip().lower() == "ties"


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    subset: str

    @property
    def responses(self) -> list[str]:
        """Chosen first, then rejected: response i is correct when i < len(chosen)."""
        return [*self.chosen, *self.rejected]

    @property
    def group(self) -> str:
        """The prompt this row belongs to: a Ties prompt's ref and tied rows share one."""
        m = _TIES_ID.match(self.id) if is_ties(self.subset) else None
        return m.group(2) if m else self.id


# --------------------------------------------------------------------------------------------------
# Loading and validation


def load_examples(source: str, split: str = "test") -> list[Example]:
    """Every row of `source` (a hub id or a local file), validated; errors name the source and row."""
    from open_instruct.dataset_utils import DatasetError, load_source, place

    try:
        rows = load_source(source, split)
    except DatasetError as e:
        raise UserError(str(e)) from None
    if not rows:
        raise UserError(f"{source}: no rows")
    examples, seen = [], {}
    for index, row in enumerate(rows):
        where = place(rows, index, source)
        example = _validate(row, where)
        if example.id in seen:
            raise UserError(f"{where}: id {example.id!r} repeats {seen[example.id]}")
        seen[example.id] = where
        examples.append(example)
    return examples


def _validate(row: Any, where: str) -> Example:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object, got {type(row).__name__}")
    missing = [c for c in ("id", "prompt", "chosen", "rejected", "subset") if c not in row]
    if missing:
        raise UserError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    raw_id = row["id"]
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or str(raw_id) == "":
        raise UserError(f"{where}: 'id' must be a non-empty string or an integer")
    where = f"{where} (id {raw_id})"
    for column in ("prompt", "subset"):
        if not isinstance(row[column], str) or not row[column].strip():
            raise UserError(f"{where}: '{column}' must be a non-empty string")
    for column in ("chosen", "rejected"):
        value = row[column]
        if hasattr(value, "tolist"):  # parquet list columns can arrive as numpy arrays
            value = value.tolist()
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise UserError(f"{where}: '{column}' must be a list of strings, got {type(value).__name__}")
        if not value:
            raise UserError(f"{where}: '{column}' is an empty list")
        row = {**row, column: value}
    counts = {
        "num_correct": len(row["chosen"]),
        "num_incorrect": len(row["rejected"]),
        "total_completions": len(row["chosen"]) + len(row["rejected"]),
    }
    for column, expected in counts.items():
        if row.get(column) is not None and row[column] != expected:
            raise UserError(f"{where}: '{column}' is {row[column]} but the lists hold {expected}")
    if is_ties(row["subset"]) and not _TIES_ID.match(str(raw_id)):
        raise UserError(f"{where}: a Ties row's id must be 'ref:<n>' or 'tied:<n>' (RewardBench 2's layout)")
    return Example(
        str(raw_id), row["prompt"], tuple(row["chosen"]), tuple(row["rejected"]), row["subset"].strip()
    )


def select(
    examples: list[Example], subsets: list[str] | None, limit: int | None, source: str
) -> list[Example]:
    """The examples of `subsets` (all when None; names match case-insensitively), and of each subset only
    the first `limit` prompts, in dataset order."""
    present = list(dict.fromkeys(e.subset for e in examples))
    if subsets:
        by_name = {s.lower(): s for s in present}
        unknown = [s for s in subsets if s.strip().lower() not in by_name]
        if unknown:
            raise UserError(
                f"--subsets: {', '.join(map(repr, unknown))} not in {source}; it has {', '.join(present)}"
            )
        wanted = {by_name[s.strip().lower()] for s in subsets}
        examples = [e for e in examples if e.subset in wanted]
    if limit is None:
        return examples
    groups: dict[str, list[str]] = defaultdict(list)
    for e in examples:
        if e.group not in groups[e.subset]:
            groups[e.subset].append(e.group)
    keep = {(subset, g) for subset, gs in groups.items() for g in gs[:limit]}
    return [e for e in examples if (e.subset, e.group) in keep]


def subset_order(subsets: set[str]) -> list[str]:
    """RewardBench 2's order, then any other subset alphabetically."""
    known = [s for s in SUBSET_ORDER if s in subsets]
    return known + sorted(subsets - set(known))


# --------------------------------------------------------------------------------------------------
# When an example is correct


def scores_correct(scores: list[float], num_chosen: int) -> bool:
    """Every chosen response (the first `num_chosen`) scores strictly higher than every rejected one."""
    return min(scores[:num_chosen]) > max(scores[num_chosen:])


def official_credit(method: str, record: dict) -> float:
    """RewardBench 2's credit for one best-of-N example (module docstring)."""
    calls, num_chosen = record["calls"], record["num_chosen"]
    if method in SCORE_METHODS:
        scores = record["scores"]
        if None in scores or (method == "pointwise" and not all(c["parsed"] for c in calls)):
            return 1 / len(scores)
        top = max(scores)
        at_top = sum(s == top for s in scores)
        return 1 / at_top if max(scores[:num_chosen]) == top else 0.0
    if method == "listwise":
        call = calls[0]
        if call["failed"] or not call["parsed"]:
            return 1 / len(call["order"])
        return 1.0 if call["picked"] < num_chosen else 0.0
    if any(c["failed"] for c in calls):
        return 1 / (num_chosen + len({c["rejected"] for c in calls}))
    return 1.0 if record["status"] == "correct" else 0.0


def listwise_order(seed: int, example_id: str, n: int) -> list[int]:
    """The order the listwise judge sees the responses in: shown position k holds response order[k].
    Seeded per example, so a resumed run shows every example as the first run did."""
    order = list(range(n))
    random.Random(f"{seed}:{example_id}").shuffle(order)
    return order


# --------------------------------------------------------------------------------------------------
# Accuracy per subset


def ties_score(records: list[dict]) -> dict:
    """RewardBench 2's Ties score (module docstring) from the judged Ties records of a score-based method;
    `score` is None when no prompt has both its ref and its tied row judged."""
    stats: dict[str, dict[str, tuple[bool, float, float]]] = {"ref": {}, "tied": {}}
    for r in records:
        kind, prompt = _TIES_ID.match(r["id"]).groups()
        correct, incorrect = r["scores"][: r["num_chosen"]], r["scores"][r["num_chosen"] :]
        gap = min(correct) - max(incorrect)
        stats[kind][prompt] = (gap > 0, gap, max(correct) - min(correct))
    ref, tied = stats["ref"], stats["tied"]
    paired = sorted(set(ref) & set(tied))
    detail = {"score": None, "prompts": len(paired), "ref_rows": len(ref), "tied_rows": len(tied)}
    if not paired:
        return detail
    hardest = {p: min(ref[p][1], tied[p][1]) for p in paired}
    spread = {p: tied[p][2] for p in paired}
    parts = {
        "ref_accuracy": _mean([s[0] for s in ref.values()]),
        "tied_accuracy": _mean([s[0] for s in tied.values()]),
        "correctness_preferred": _mean([tied[p][1] > spread[p] for p in paired]),
        "correctness_preferred_hard": _mean([hardest[p] > spread[p] for p in paired]),
        "margin_score": _mean([_tanh_ratio(hardest[p], spread[p]) for p in paired]),
    }
    score = (
        0.30 * parts["tied_accuracy"]
        + 0.30 * parts["ref_accuracy"]
        + 0.20 * parts["correctness_preferred"]
        + 0.20 * parts["correctness_preferred_hard"]
        + 0.01 * parts["margin_score"]
    )
    return {**detail, **parts, "score": score}


def _tanh_ratio(gap: float, spread: float) -> float:
    """tanh(gap / spread - 1), with x/0 = +-inf and 0/0 counting 0, as numpy's division gives there."""
    if spread == 0:
        return 0.0 if gap == 0 else math.copysign(1.0, gap)
    return math.tanh(gap / spread - 1)


def _mean(values: list) -> float:
    return sum(values) / len(values)


def summarize(method: str, records: list[dict]) -> dict:
    """One method's results from its latest record per example: `official` (RewardBench 2's score, every
    example counted) and `accuracy` (failed examples left out) per subset and `overall`, the unweighted mean
    over the subsets that have one; `n` examples judged, `failures` examples whose judge calls failed."""
    judged = [r for r in records if r["status"] != "failed"]
    by_subset: dict[str, list[dict]] = defaultdict(list)
    for r in judged:
        by_subset[r["subset"]].append(r)
    accuracy: dict[str, float | None] = {}
    official: dict[str, float | None] = {}
    extra: dict[str, Any] = {}
    for subset in subset_order({r["subset"] for r in records}):
        rows = by_subset.get(subset, [])
        if is_ties(subset) and method in SCORE_METHODS:
            extra["ties"] = ties_score(rows)
            accuracy[subset] = official[subset] = extra["ties"]["score"]
        elif is_ties(subset):
            share = _mean([r["status"] == "correct" for r in rows]) if rows else None
            extra["ties_apart"] = {
                "subset": subset,
                "accuracy": share,
                "n": len(rows),
                "rule": "every correct answer beats every incorrect one"
                if method == "pairwise"
                else "the pick is a correct answer",
            }
        else:
            accuracy[subset] = _mean([r["status"] == "correct" for r in rows]) if rows else None
            everyone = [r for r in records if r["subset"] == subset]
            official[subset] = _mean([official_credit(method, r) for r in everyone]) if everyone else None
    present = [a for a in accuracy.values() if a is not None]
    counted = [a for a in official.values() if a is not None]
    calls = [c for r in records for c in r["calls"]]
    return {
        "method": method,
        "official": {"overall": _mean(counted) if counted else None, **official},
        "accuracy": {"overall": _mean(present) if present else None, **accuracy},
        "n": len(judged),
        "failures": len(records) - len(judged),
        "n_per_subset": {s: len(by_subset.get(s, [])) for s in subset_order({r["subset"] for r in records})},
        "failed_calls": sum(c["failed"] for c in calls),
        "unparsed": sum(c["judge_ok"] and not c["parsed"] for c in calls),
        **extra,
    }


def resolve_source(source: str) -> str:
    """A local file as an absolute path (so a resumed run matches however the path was written)."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source
