"""Prompt data for GRPO: load a dataset mixture, validate it, apply a chat template, tokenize.

Rows follow the RLVR schema:

    {"messages": [{"role": "user", "content": "Write a haiku about rain."}],   # ends with a user turn
     "ground_truth": "Write a haiku about rain.",                              # str (or list of str)
     "dataset": "general-flip"}                                                # the verifier's name

A mixture is given as in Open Instruct, pairs of source and amount:

    --dataset_mixer_list data/general_chat_flip_sample.jsonl 1.0 allenai/some-dataset 500
    --dataset_mixer_list_splits train            # one split for every source, or one per source

Sources are local `.json` / `.jsonl` / `.parquet` files (the split is ignored, except for a `.json` file
holding an object of splits) or anything else `datasets.load_dataset` accepts, such as a hub id.

Amounts: a number written with a "." (or an exponent) is a fraction of the source, an integer is a row
count. The selection from each source is
    target = count, or floor(fraction * rows)      (a target of 0 rows is an error)
    whole copies of the source, target // rows times, in file order,
    then target % rows distinct rows drawn at random (seeded), kept in file order.
So `1.0` takes every row in order, `0.5` half of them, `2.0` or a count above the source size repeats
the source (upsampling, as Open Instruct does) and `300` of a 200-row source is every row once plus 100 drawn
ones. Sources are concatenated in mixer order; shuffling between epochs is the trainer's job.

Every row of every source is validated as soon as the source is read, before any model loads; the first bad
row stops the run with one line naming the source, the row (counted from 0 in file order) and the field.
"""

import json
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from open_instruct.cli_utils import first_line

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
ROLES = ("system", "user", "assistant")

Amount = float | int


class DatasetError(ValueError):
    """A mistake in the data flags or in a dataset row, reported as one line."""


# --------------------------------------------------------------------------------------------------
# Mixer flags


def parse_mixer_list(items: Sequence[str]) -> list[tuple[str, Amount]]:
    """`["a.jsonl", "1.0", "org/b", "500"]` (or the same as one space-separated string) ->
    `[("a.jsonl", 1.0), ("org/b", 500)]`. Floats are fractions of the source, ints are row counts."""
    tokens = [tok for item in items for tok in str(item).split()]
    if not tokens:
        raise DatasetError(
            "--dataset_mixer_list is empty; give pairs of source and amount, e.g. data/x.jsonl 1.0"
        )
    if len(tokens) % 2:
        raise DatasetError(
            f"--dataset_mixer_list needs pairs of source and amount; got {len(tokens)} items: {' '.join(tokens)}"
        )
    return [
        (source, _parse_amount(source, amount))
        for source, amount in zip(tokens[::2], tokens[1::2], strict=True)
    ]


def _parse_amount(source: str, text: str) -> Amount:
    hint = "use a fraction like 0.5 or 1.0, or a row count like 500"
    is_fraction = any(c in text for c in ".eE")
    try:
        amount: Amount = float(text) if is_fraction else int(text)
    except ValueError:
        raise DatasetError(
            f"--dataset_mixer_list: amount {text!r} for {source!r} is not a number ({hint})"
        ) from None
    if not math.isfinite(amount) or amount <= 0:
        raise DatasetError(f"--dataset_mixer_list: amount {text!r} for {source!r} must be positive ({hint})")
    return amount


def resolve_splits(splits: Sequence[str] | None, num_sources: int) -> list[str]:
    """One split per source: none given -> "train" for all, one given -> it for all, else one each."""
    splits = [s for item in (splits or []) for s in str(item).split()] or ["train"]
    if len(splits) == 1:
        return splits * num_sources
    if len(splits) != num_sources:
        raise DatasetError(
            f"--dataset_mixer_list_splits has {len(splits)} splits for {num_sources} sources; "
            "give one split for all of them or one per source"
        )
    return splits


# --------------------------------------------------------------------------------------------------
# Loading


class Rows(list):
    """A source's rows, and where each one is, counted from 1 (`places[i]`): FILE:LINE for JSON lines,
    `SOURCE row N` for a JSON array, a parquet file or a hub dataset. Every error about a row names it so."""

    def __init__(self, rows: Iterable[Any], places: Sequence[str] | None = None, source: str = ""):
        super().__init__(rows)
        self.places = (
            list(places) if places is not None else [f"{source} row {i + 1}" for i in range(len(self))]
        )


def place(rows: Sequence[Any], index: int, source: str) -> str:
    """Where rows[index] is (see Rows); plain lists count their rows from 1."""
    return rows.places[index] if isinstance(rows, Rows) else f"{source} row {index + 1}"


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number from 1, value) for every non-blank line; a line that is not JSON is a DatasetError naming
    FILE:LINE and the column."""
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    return out


def load_source(source: str, split: str = "train") -> Rows:
    """All rows of one source: a local .json/.jsonl/.parquet file, or a `datasets.load_dataset` path."""
    path = Path(source)
    if path.suffix.lower() in LOCAL_SUFFIXES:
        if not path.is_file():
            raise DatasetError(f"{source}: file not found")
        if path.suffix.lower() == ".parquet":
            return Rows(_read_parquet(path), source=source)
        return _read_json(path, split)
    if path.is_file():
        raise DatasetError(f"{source}: unsupported file type; use {', '.join(LOCAL_SUFFIXES)}")
    return Rows(_load_hub(source, split), source=source)


def _read_json(path: Path, split: str) -> Rows:
    """A JSON array, an object of splits ({"train": [...]}), or JSON lines (which `.json` files often are)."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = None  # not one JSON document: read it as JSON lines below
        if isinstance(data, list):
            return Rows(data, source=str(path))
        if isinstance(data, dict):
            if isinstance(data.get(split), list):
                return Rows(data[split], source=f"{path} [{split!r}]")
            raise DatasetError(f"{path}: a JSON object must hold the split {split!r} as a list of rows")
    lines = read_jsonl(path)
    return Rows([value for _, value in lines], [f"{path}:{lineno}" for lineno, _ in lines])


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # a corrupt or non-parquet file: pyarrow's errors are long
        raise DatasetError(f"{path}: not a readable parquet file ({first_line(e, 200)})") from None


def _quiet_hub_logging() -> None:
    """The hub client logs every retry of an unreachable hub; the error that follows says it in one line."""
    import logging

    import datasets
    import huggingface_hub.utils.logging

    huggingface_hub.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    logging.getLogger("fsspec").setLevel(logging.ERROR)


def _load_hub(source: str, split: str) -> list[dict]:
    import datasets

    _quiet_hub_logging()
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # offline, unknown id, missing split, auth...: all end the run the same way
        offline = any(
            os.environ.get(v, "").lower() in ("1", "true", "yes")
            for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        )
        hint = " (offline mode is on: use a local .jsonl/.json/.parquet file)" if offline else ""
        raise DatasetError(
            f"{source}: could not load split {split!r} from the Hugging Face hub: {first_line(e, 200)}{hint}"
        ) from None
    return ds.to_list()


# --------------------------------------------------------------------------------------------------
# Sampling


def sample_indices(num_rows: int, amount: Amount, rng: random.Random) -> list[int]:
    """Row indices for one source (see the module docstring): whole copies, then a seeded draw without
    replacement for the remainder, each part in file order."""
    target = amount if isinstance(amount, int) else math.floor(amount * num_rows)
    if target <= 0:
        raise ValueError(f"amount {amount} selects no rows of a {num_rows}-row source")
    copies, rest = divmod(target, num_rows)
    return list(range(num_rows)) * copies + sorted(rng.sample(range(num_rows), rest))


def load_mixture(
    mixer_list: Sequence[str],
    splits: Sequence[str] | None,
    seed: int,
    known_verifiers: set[str] | None = None,
) -> list[dict]:
    """Load, validate and sample every source of `--dataset_mixer_list`; rows concatenated in mixer order.
    The same flags and seed always give the same rows in the same order."""
    mixture = parse_mixer_list(mixer_list)
    rows: list[dict] = []
    for position, ((source, amount), split) in enumerate(
        zip(mixture, resolve_splits(splits, len(mixture)), strict=True)
    ):
        source_rows = load_source(source, split)
        validate_rows(source_rows, source, known_verifiers)
        # One generator per source, keyed by its place in the mixer, so editing one entry leaves the
        # others' draws alone. (A str seed is hashed with SHA-512: stable across runs and machines.)
        rng = random.Random(f"{seed}:{position}:{source}")
        try:
            picked = sample_indices(len(source_rows), amount, rng)
        except ValueError as e:
            raise DatasetError(f"--dataset_mixer_list: {source}: {e}") from None
        rows.extend(dict(source_rows[i]) for i in picked)  # copies: repeated rows must not alias
    return rows


# --------------------------------------------------------------------------------------------------
# Validation


def validate_rows(rows: Sequence[Any], source: str, known_verifiers: set[str] | None = None) -> None:
    """Raise DatasetError on the first row that does not fit the RLVR schema, naming where it is (FILE:LINE or
    SOURCE row N, from 1) and the field."""
    known = {v.strip().lower() for v in known_verifiers} if known_verifiers is not None else None
    for index, row in enumerate(rows):
        problem = _row_problem(row, known)
        if problem:
            raise DatasetError(f"{place(rows, index, source)}: {problem}")
    if not rows:
        raise DatasetError(f"{source}: no rows")


def _row_problem(row: Any, known: set[str] | None) -> str | None:
    """What is wrong with one row, or None."""
    if not isinstance(row, dict):
        return f"expected an object with 'messages', 'ground_truth' and 'dataset', got {type(row).__name__}"

    messages = row.get("messages")
    if messages is None:
        return "missing 'messages'"
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} turns"
    for j, turn in enumerate(messages):
        if not isinstance(turn, dict):
            return f"'messages'[{j}] must be an object with 'role' and 'content'"
        role = turn.get("role")
        if not isinstance(role, str) or role not in ROLES:
            return f"'messages'[{j}] 'role' must be one of {', '.join(ROLES)}; got {_short(role)}"
        if not isinstance(turn.get("content"), str):
            return f"'messages'[{j}] 'content' must be a string; got {_short(turn.get('content'))}"
    if messages[-1]["role"] != "user":
        return "'messages' must end with a user turn"
    if not messages[-1]["content"].strip():
        return "'messages' last user turn is empty"

    if row.get("ground_truth") is None:
        return "missing 'ground_truth'"
    truth = row["ground_truth"]
    if not (
        isinstance(truth, str)
        or (isinstance(truth, list) and truth and all(isinstance(t, str) for t in truth))
    ):
        return f"'ground_truth' must be a string or a non-empty list of strings; got {_short(truth)}"

    name = row.get("dataset")
    if name is None:
        return "missing 'dataset' (the verifier name, e.g. general-flip)"
    if not isinstance(name, str) or not name.strip():
        return f"'dataset' must be a verifier name such as general-flip; got {_short(name)}"
    if known is not None and name.strip().lower() not in known:
        return f"'dataset' {name!r} is not a known verifier (known: {', '.join(sorted(known))})"
    return None


def _short(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr, on one line, cut short."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------
# Chat templates

# Written as single-line jinja so no stray whitespace reaches the prompt.
_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tulu: <|user|>\n...\n turns; an assistant turn ends with the EOS token.
_TULU = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] }}{{ eos_token or '' }}{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Open Instruct's `olmo_thinker`, the published recipe's template, rendering exactly as upstream's does
# (tests/test_dataset_utils.py holds upstream's rendered text): a default system turn when the messages have
# none; a system message of the row's own gets the "no functions" note; `functions` and `function_calls`
# fields; the last assistant turn ends with the EOS token; the generation prompt opens the assistant turn
# with <think>, so the response text begins inside the think block (judge_utils.strip_reasoning handles the
# lone </think>).
OLMO_THINKER_SYSTEM = "You are a helpful AI assistant."
_NO_FUNCTIONS = " You do not currently have access to any functions. <functions></functions>"
_OLMO_THINKER = (
    "{% if not (messages | selectattr('role', 'equalto', 'system') | list) %}"
    "{{ '<|im_start|>system\n" + OLMO_THINKER_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for m in messages %}"
    "{% set functions = m.get('functions', none) %}"
    "{% if m['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + m['content'] }}"
    "{{ (' <functions>' + functions + '</functions>') if functions is not none else '"
    + _NO_FUNCTIONS
    + "' }}"
    "{{ '<|im_end|>\n' }}"
    "{% elif m['role'] == 'user' %}"
    "{{ '<|im_start|>user\n' + m['content'] }}"
    "{{ ('\n<functions>' + functions + '</functions>') if functions is not none else '' }}"
    "{{ '<|im_end|>\n' }}"
    "{% elif m['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{{ m['content'] if m.get('content', none) is not none else '' }}"
    "{{ ('<function_calls>' + m['function_calls'] + '</function_calls>') if m.get('function_calls', none) is not none else '' }}"
    "{{ '<|im_end|>\n' if not loop.last else eos_token }}"
    "{% elif m['role'] == 'environment' %}"
    "{{ '<|im_start|>environment\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|im_start|>assistant\n<think>' }}{% endif %}"
    "{% endfor %}"
)

# Qwen3's format (the Qwen3 chat models' own template renders this text; tests/test_dataset_utils.py holds it):
# ChatML turns; an assistant turn before the last user turn keeps only its answer (the reasoning before
# </think>, or in `reasoning_content`, is dropped); one after it is written as <think>\nREASONING\n</think>\n\n
# ANSWER; the generation prompt opens the assistant turn, and with enable_thinking=False (a
# --chat_template_kwargs entry) it also closes an empty think block, so the model answers at once. Tool calls
# and tool turns are not rendered (the trainer has no tools).
_QWEN3 = (
    "{% set ns = namespace(last_query=messages | length - 1) %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_query = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}"
    "{% set content = m['content'] if m['content'] is string else '' %}"
    "{% set reasoning = m.get('reasoning_content', none) %}"
    "{% if reasoning is not string %}"
    "{% set reasoning = '' %}"
    "{% if '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}"
    "{% endif %}"
    "{% endif %}"
    "{% if loop.index0 > ns.last_query and (loop.last or reasoning) %}"
    "{{ '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}"
    "{% else %}"
    "{{ '<|im_start|>assistant\n' + content }}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    "tulu": _TULU,
    "olmo_thinker": _OLMO_THINKER,
    "qwen3": _QWEN3,
}


def get_chat_template(tokenizer: Any, name: str | None) -> str:
    """The tokenizer's own template for None or "tokenizer", else the named one from CHAT_TEMPLATES."""
    if name is None or name == "tokenizer":
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # some tokenizers keep several; "default" is the chat one
            template = template.get("default")
        if not template:
            raise DatasetError(
                "the tokenizer has no chat template; pass --chat_template_name with one of: "
                + ", ".join(CHAT_TEMPLATES)
            )
        return template
    if name not in CHAT_TEMPLATES:
        raise DatasetError(
            f"unknown chat template {name!r}; known: {', '.join(CHAT_TEMPLATES)}, or 'tokenizer' for the tokenizer's own"
        )
    return CHAT_TEMPLATES[name]


# --------------------------------------------------------------------------------------------------
# Tokenization


@dataclass
class PromptRow:
    index: int
    """position in the rows given to tokenize_prompts (the mixture)."""
    prompt_token_ids: list[int]
    """the chat-templated prompt, assistant turn opened (add_generation_prompt=True)."""
    messages: list[dict]
    ground_truth: str | list[str]
    dataset: str
    """the verifier's name."""


def tokenize_prompts(
    rows: Sequence[dict],
    tokenizer: Any,
    chat_template: str,
    max_prompt_token_length: int,
    template_kwargs: dict | None = None,
) -> tuple[list[PromptRow], int]:
    """Tokenized prompts of the (validated) rows, and how many were dropped for being longer than
    `max_prompt_token_length` tokens (dropped, not truncated: a cut prompt asks a different question).
    `template_kwargs` reach the template as variables (e.g. enable_thinking)."""
    texts = [
        tokenizer.apply_chat_template(
            row["messages"],
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=True,
            **(template_kwargs or {}),
        )
        for row in rows
    ]
    # The template already writes any BOS/special tokens it wants; the tokenizer must not add more.
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    prompts, dropped = [], 0
    for index, (row, token_ids) in enumerate(zip(rows, ids, strict=True)):
        if len(token_ids) > max_prompt_token_length:
            dropped += 1
            continue
        prompts.append(
            PromptRow(index, list(token_ids), row["messages"], row["ground_truth"], row["dataset"])
        )
    return prompts, dropped
