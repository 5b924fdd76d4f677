"""Which lm-evaluation-harness task stands for each downstream benchmark of the published recipe.

The one place that maps a name a user (or the published script's `--oe_eval_tasks`) gives to the lm-eval task
run, its settings, the metric reported, and how that differs from AI2's oe-eval configuration of the same
name. The README's table is generated from TASKS (`readme_table`; a test keeps the two equal).

oe-eval's `hamish_zs_reasoning_deepseek` configurations are zero-shot, chat-formatted, with generation long
enough for a reasoning model and answers read after its thinking. lm-eval's tasks below are the closest the
harness ships; their prompts, answer extraction and decoding (greedy, from lm-eval's YAMLs) are lm-eval's, so
scores are comparable across checkpoints of one run, not digit for digit with oe-eval's.
"""

from dataclasses import dataclass

from open_instruct.cli_utils import UserError


@dataclass(frozen=True)
class DownstreamTask:
    name: str  # the short name `--tasks` takes
    oe_eval: str  # the published oe-eval name, also accepted
    lm_eval: str  # the lm-eval task or group run
    metric: str  # the headline: a key of lm-eval's results for `lm_eval` ("metric,filter")
    num_fewshot: int | None  # None: the lm-eval task's own
    differs: str  # how this differs from oe-eval's configuration


TASKS = (
    DownstreamTask(
        "ifeval",
        "ifeval::hamish_zs_reasoning_deepseek",
        "ifeval",
        "prompt_level_loose_acc,none",
        None,
        "the same 541 prompts (google/IFEval) with lm-eval's port of the instruction checks; at most 1280 "
        "tokens unless --max_length is given; the checker downloads NLTK's punkt_tab on first use",
    ),
    DownstreamTask(
        "bbh_cot",
        "bbh:cot::hamish_zs_reasoning_deepseek_v2",
        "bbh_cot_zeroshot",
        "exact_match,flexible-extract",
        None,
        "lm-eval's zero-shot 'Let's think step by step' prompts and answer regexes; what oe-eval's `_v2` "
        "variant changes is not reproduced",
    ),
    DownstreamTask(
        "gpqa_cot",
        "gpqa:0shot_cot::hamish_zs_reasoning_deepseek",
        "gpqa_main_cot_zeroshot",
        "exact_match,flexible-extract",
        None,
        "GPQA main (448 questions) with lm-eval's prompt and letter extraction; the dataset is gated on the HF "
        "hub (accept its terms and set HF_TOKEN)",
    ),
    DownstreamTask(
        "minerva_math",
        "minerva_math::hamish_zs_reasoning_deepseek",
        "minerva_math",
        "math_verify,none",
        0,
        "run zero-shot (lm-eval's default is 4-shot); scored by lm-eval's math_verify, not oe-eval's own "
        "answer checker",
    ),
    DownstreamTask(
        "math_500",
        "minerva_math_500::hamish_zs_reasoning_deepseek",
        "minerva_math500",
        "math_verify,none",
        0,
        "the MATH-500 subset (HuggingFaceH4/MATH-500) with lm-eval's Minerva prompt, zero-shot, scored by "
        "math_verify",
    ),
)

BY_NAME = {alias: t for t in TASKS for alias in (t.name, t.oe_eval)}


@dataclass(frozen=True)
class Selected:
    """A task to run: a mapped one, or a task of the user's own (`--include_path`) run as its YAML says."""

    name: str
    lm_eval: str
    metric: str | None  # None: the first metric lm-eval reports for it
    num_fewshot: int | None


def known_names() -> str:
    return ", ".join(t.name for t in TASKS)


def split_names(text: str | list[str]) -> list[str]:
    """Task names from `a,b c` or a list of such strings (the published script gives one comma list)."""
    parts = text if isinstance(text, list) else [text]
    return [n.strip() for p in parts for n in p.split(",") if n.strip()]


def resolve(
    names: list[str],
    user_tasks: set[str] = frozenset(),
    flag: str = "--tasks",
    include_flag: str = "--include_path",
) -> list[Selected]:
    """The tasks to run for `names`, in order, each once. A name is a short name, a published oe-eval name,
    or a task the user's include path defines (`user_tasks`); anything else is a UserError listing the
    known names."""
    if not names:
        raise UserError(f"{flag}: no task given; known: {known_names()}")
    chosen: dict[str, Selected] = {}
    for name in names:
        task = BY_NAME.get(name)
        if task is not None:
            chosen.setdefault(task.name, Selected(task.name, task.lm_eval, task.metric, task.num_fewshot))
        elif name in user_tasks:
            chosen.setdefault(name, Selected(name, name, None, None))
        else:
            more = f", or a task of your own with {include_flag}" if not user_tasks else ""
            raise UserError(
                f"{flag}: unknown task {name!r}; known: {known_names()} (or their oe-eval names{more})"
            )
    return list(chosen.values())


def readme_table() -> str:
    """The README's table of TASKS, as Markdown."""
    rows = [
        "| `--tasks` | published oe-eval name | lm-eval task | shots | reported metric | differs from oe-eval |",
        "|---|---|---|---|---|---|",
    ]
    for t in TASKS:
        shots = "task's own (0)" if t.num_fewshot is None else str(t.num_fewshot)
        rows.append(f"| `{t.name}` | `{t.oe_eval}` | `{t.lm_eval}` | {shots} | `{t.metric}` | {t.differs} |")
    return "\n".join(rows)
