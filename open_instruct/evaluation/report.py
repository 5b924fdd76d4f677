"""report.md and accuracy.png for `flip_eval`: RewardBench 2's official score per subset and method (the headline,
as a table and a grouped bar chart with the random-choice line of best-of-4, 25%), and the strict accuracy
with failed examples left out beside it."""

from pathlib import Path

from open_instruct.evaluation.reward_bench import subset_order

CHART = "accuracy.png"
RANDOM_BEST_OF_4 = 25.0


def _subsets(results: list[dict]) -> list[str]:
    names = {s for r in results for s in r["accuracy"] if s != "overall"}
    names |= {r["ties_apart"]["subset"] for r in results if "ties_apart" in r}
    return subset_order(names)


def _cell(result: dict, subset: str, key: str = "official") -> tuple[float | None, bool]:
    """(the `key` figure in percent or None, whether it is reported apart from the overall)."""
    apart = result.get("ties_apart")
    if apart and apart["subset"] == subset:
        return (None if apart["accuracy"] is None else 100 * apart["accuracy"]), True
    value = result[key].get(subset)
    return (None if value is None else 100 * value), False


def table(results: list[dict], key: str = "official") -> list[str]:
    def fmt(value: float | None, apart: bool = False) -> str:
        text = "–" if value is None else f"{value:.1f}"
        return f"({text})†" if apart and value is not None else text

    lines = [
        "| subset | " + " | ".join(r["method"] for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for subset in [*_subsets(results), "overall"]:
        cells = [fmt(*_cell(r, subset, key)) for r in results]
        name = f"**{subset}**" if subset == "overall" else subset
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key in ("n", "failures", "unparsed"):
        lines.append(f"| {key} | " + " | ".join(str(r[key]) for r in results) + " |")
    return lines


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    groups = [*_subsets(results), "overall"]
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(groups) + 1.5), 4.8))
    for k, result in enumerate(results):
        xs, heights = [], []
        for g, subset in enumerate(groups):
            value, apart = _cell(result, subset)
            if value is not None and not apart:  # a figure under another rule has no bar beside the others
                xs.append(g - 0.4 + width * (k + 0.5))
                heights.append(value)
        bars = ax.bar(xs, heights, width, label=result["method"])
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.axhline(RANDOM_BEST_OF_4, color="0.35", linestyle="--", linewidth=1, label="random (best-of-4)")
    ax.axvline(len(groups) - 1.5, color="0.8", linewidth=0.8)  # subsets | overall
    labels = [f"{g}\n(RB2 score)" if g.lower() == "ties" else g for g in groups]
    ax.set_xticks(range(len(groups)), labels, fontsize=9)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylim(0, 110)
    ax.set_ylabel("RewardBench 2 score (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(results) + 1, frameon=False
    )
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_report(out_dir: Path, results: list[dict], config: dict) -> Path:
    """Write report.md and the chart beside it; returns the report's path."""
    title = f"RewardBench 2, judge {config['judge_model']}"
    plot(results, out_dir / CHART, title)
    notes = [
        "The score in percent, as RewardBench 2's own code gives it: per best-of-N example, 1 / (number of responses "
        "tied at the top) when the chosen one is among them (flip, pointwise), 1 when the pick is the chosen one "
        "(listwise), and 1 / N when there is no verdict (an answer that does not parse, except flip's, which is "
        "scored on the raw text, or a failed call). Every example counts. Most subsets pick the best of four: "
        f"random choice scores {RANDOM_BEST_OF_4:.0f}.",
        "**overall** is the unweighted mean over the subsets with a figure.",
    ]
    strict = [
        "Accuracy in percent: an example is correct when the chosen response scores strictly higher than every "
        "rejected one (flip, pointwise), wins every comparison in both orders (pairwise), or is the judge's pick "
        "(listwise). Examples whose judge calls failed are left out and counted under *failures*; *unparsed* "
        "counts judge answers that did not parse, counted against the chosen response "
        f"(--on-unparsed {config['on_unparsed']}).",
    ]
    if any(subset.lower() == "ties" for subset in _subsets(results)):
        notes.append(
            "Ties for flip and pointwise is RewardBench 2's Ties score (accuracy on each prompt's ref and tied rows, "
            "and whether correct answers stand further from incorrect ones than from each other). † Pairwise and "
            "listwise give no scores, so that rule cannot apply: their figure is the share of Ties rows where every "
            "correct answer beats every incorrect one (pairwise) or the pick is a correct answer (listwise), shown "
            "apart, left out of their overall and of the chart."
        )
    lines = [
        f"# {title}",
        "",
        f"Dataset `{config['dataset']}` (split {config['split']}), judge `{config['judge_model']}`, "
        f"max tokens {config['judge_max_tokens']}, temperature {config['judge_temperature']}, seed {config['seed']}.",
        "",
        *table(results),
        "",
        *[f"{note}\n" for note in notes],
        f"![RewardBench 2 score per subset and method]({CHART})",
        "",
        "## Strict accuracy, failed examples left out",
        "",
        *table(results, "accuracy"),
        "",
        *[f"{note}\n" for note in strict],
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
