"""Dataset mixture, validation, chat templates and prompt tokenization (all offline, on local files)."""

import json
from pathlib import Path

import pytest

from open_instruct import dataset_utils as du
from open_instruct.dataset_utils import DatasetError

REPO = Path(__file__).resolve().parent.parent
FLIP_SAMPLE = REPO / "data" / "general_chat_flip_sample.jsonl"
QUALITY_SAMPLE = REPO / "data" / "general_chat_sample.jsonl"
VERIFIERS = {"general-flip", "general-quality", "general-quality_ref"}


def row(i: int, verifier: str = "general-flip") -> dict:
    prompt = f"Write a poem about number {i}."
    return {"messages": [{"role": "user", "content": prompt}], "ground_truth": prompt, "dataset": verifier}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def ten_rows(tmp_path) -> str:
    return write_jsonl(tmp_path / "ten.jsonl", [row(i) for i in range(10)])


def prompt_ids(rows: list[dict]) -> list[str]:
    return [r["ground_truth"] for r in rows]


# --------------------------------------------------------------------------------------------------
# Mixer flags


def test_parse_mixer_list_fractions_and_counts():
    assert du.parse_mixer_list(["a.jsonl", "1.0", "org/b", "500", "c.parquet", "0.25"]) == [
        ("a.jsonl", 1.0),
        ("org/b", 500),
        ("c.parquet", 0.25),
    ]
    parsed = du.parse_mixer_list(["a.jsonl 0.5 org/b 3"])  # one shell-quoted string works too
    assert parsed == [("a.jsonl", 0.5), ("org/b", 3)]
    assert isinstance(parsed[0][1], float) and isinstance(parsed[1][1], int)
    assert du.parse_mixer_list(["x", "1e-1"]) == [("x", 0.1)]


@pytest.mark.parametrize(
    "items, needle",
    [
        (["a.jsonl"], "pairs"),
        (["a.jsonl", "1.0", "b.jsonl"], "pairs"),
        ([], "empty"),
        (["a.jsonl", "lots"], "'lots'"),
        (["1.0", "a.jsonl"], "'a.jsonl'"),
        (["a.jsonl", "0"], "positive"),
        (["a.jsonl", "-0.5"], "positive"),
        (["a.jsonl", "nan"], "not a number"),
    ],
)
def test_parse_mixer_list_errors(items, needle):
    with pytest.raises(DatasetError) as err:
        du.parse_mixer_list(items)
    msg = str(err.value)
    assert "--dataset_mixer_list" in msg and needle in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)


def test_splits_one_for_all_or_one_each():
    assert du.resolve_splits(["train"], 3) == ["train"] * 3
    assert du.resolve_splits(None, 2) == ["train", "train"]
    assert du.resolve_splits(["train", "test"], 2) == ["train", "test"]
    with pytest.raises(DatasetError, match="--dataset_mixer_list_splits has 2 splits for 3 sources"):
        du.resolve_splits(["train", "test"], 3)


# --------------------------------------------------------------------------------------------------
# Loading local files


def test_load_jsonl_json_and_parquet_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row(i) for i in range(4)]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows))
    lines_json = write_jsonl(tmp_path / "lines.json", rows)  # `Dataset.to_json` writes JSON lines
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": rows, "test": rows[:1]}))
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)

    for source in (jsonl, str(array), lines_json, str(splits), str(parquet)):
        assert du.load_source(source, "train") == rows, source
    assert du.load_source(str(splits), "test") == rows[:1]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.jsonl: file not found"):
        du.load_source(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row(0)) + "\n\n{not json\n")
    with pytest.raises(
        DatasetError,
        match=r"bad\.jsonl:3: not valid JSON \(Expecting property name enclosed in double quotes at column 2\)",
    ):
        du.load_source(str(bad))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": [row(0)]}))
    with pytest.raises(DatasetError, match=r"split 'test'"):
        du.load_source(str(splits), "test")
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DatasetError, match=r"broken\.parquet: not a readable parquet file"):
        du.load_source(str(broken))
    other = tmp_path / "rows.csv"
    other.write_text("a,b\n")
    with pytest.raises(DatasetError, match="unsupported file type"):
        du.load_source(str(other))


def test_unreachable_hub_id_fails_fast_with_one_line(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the variables once, at import: in a run where an earlier test imported them, only
    # these make the load fail at once instead of waiting on the network (23 s in the suite before).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(DatasetError) as err:
        du.load_mixture(["nobody-here/no-such-dataset", "1.0"], ["train"], seed=0)
    msg = str(err.value)
    assert msg.startswith(
        "nobody-here/no-such-dataset: could not load split 'train' from the Hugging Face hub"
    )
    assert "offline" in msg and "\n" not in msg


# --------------------------------------------------------------------------------------------------
# Mixing and sampling


def test_fraction_takes_floor_and_is_deterministic(ten_rows):
    half = du.load_mixture([ten_rows, "0.5"], ["train"], seed=1)
    assert len(half) == 5
    assert half == du.load_mixture([ten_rows, "0.5"], ["train"], seed=1)
    assert len(du.load_mixture([ten_rows, "0.25"], ["train"], seed=1)) == 2  # floor(2.5)
    # picked rows stay in file order
    order = [int(g.split()[-1].rstrip(".")) for g in prompt_ids(half)]
    assert order == sorted(order)
    # another seed draws other rows (for at least one of a few seeds)
    others = {tuple(prompt_ids(du.load_mixture([ten_rows, "0.5"], ["train"], seed=s))) for s in range(2, 6)}
    assert others - {tuple(prompt_ids(half))}


def test_full_fraction_keeps_every_row_in_order(ten_rows):
    assert prompt_ids(du.load_mixture([ten_rows, "1.0"], None, seed=3)) == [
        row(i)["ground_truth"] for i in range(10)
    ]


def test_counts_and_upsampling_repeat_the_source(ten_rows):
    three = du.load_mixture([ten_rows, "3"], ["train"], seed=0)
    assert len(three) == 3 and len(set(prompt_ids(three))) == 3
    many = du.load_mixture([ten_rows, "25"], ["train"], seed=0)
    assert len(many) == 25
    counts = {g: prompt_ids(many).count(g) for g in set(prompt_ids(many))}
    assert len(counts) == 10 and sorted(counts.values()) == [2] * 5 + [3] * 5  # two full copies + 5 drawn
    assert len(du.load_mixture([ten_rows, "2.0"], ["train"], seed=0)) == 20
    many[0]["dataset"] = "changed"  # repeated rows are copies, not the same dict
    assert many[10]["dataset"] == "general-flip"


def test_mixture_concatenates_in_order(tmp_path, ten_rows):
    other = write_jsonl(tmp_path / "other.jsonl", [row(100 + i, "general-quality") for i in range(4)])
    rows = du.load_mixture([f"{ten_rows} 0.5 {other} 4"], ["train"], seed=7, known_verifiers=VERIFIERS)
    assert [r["dataset"] for r in rows] == ["general-flip"] * 5 + ["general-quality"] * 4


def test_amount_selecting_nothing_is_an_error(ten_rows):
    with pytest.raises(
        DatasetError, match=r"--dataset_mixer_list: .*ten\.jsonl: amount 0\.01 selects no rows"
    ):
        du.load_mixture([ten_rows, "0.01"], ["train"], seed=0)


def test_mixture_validates_every_source_row(tmp_path, ten_rows):
    bad = write_jsonl(tmp_path / "bad.jsonl", [row(0), row(1, "general-nonsense")])
    with pytest.raises(
        DatasetError, match=r"bad\.jsonl:2: 'dataset' 'general-nonsense' is not a known verifier"
    ):
        du.load_mixture([ten_rows, "1.0", bad, "1"], ["train"], seed=0, known_verifiers=VERIFIERS)


# --------------------------------------------------------------------------------------------------
# Validation


def _with(**changes) -> dict:
    r = row(0)
    for key, value in changes.items():
        if value is ...:
            del r[key]
        else:
            r[key] = value
    return r


@pytest.mark.parametrize(
    "bad, message",
    [
        ("just text", "expected an object with 'messages', 'ground_truth' and 'dataset', got str"),
        (_with(messages=...), "missing 'messages'"),
        (_with(messages="hi"), "'messages' must be a non-empty list of {role, content} turns"),
        (_with(messages=[]), "'messages' must be a non-empty list of {role, content} turns"),
        (_with(messages=["hi"]), "'messages'[0] must be an object with 'role' and 'content'"),
        (
            _with(messages=[{"role": "bot", "content": "hi"}]),
            "'messages'[0] 'role' must be one of system, user, assistant; got 'bot'",
        ),
        (
            _with(messages=[{"content": "hi"}]),
            "'messages'[0] 'role' must be one of system, user, assistant; got None",
        ),
        (_with(messages=[{"role": "user", "content": 3}]), "'messages'[0] 'content' must be a string; got 3"),
        (
            _with(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
            "'messages' must end with a user turn",
        ),
        (_with(messages=[{"role": "user", "content": "  "}]), "'messages' last user turn is empty"),
        (_with(ground_truth=...), "missing 'ground_truth'"),
        (_with(ground_truth=None), "missing 'ground_truth'"),
        (_with(ground_truth=5), "'ground_truth' must be a string or a non-empty list of strings; got 5"),
        (
            _with(ground_truth=["a", 1]),
            "'ground_truth' must be a string or a non-empty list of strings; got ['a', 1]",
        ),
        (_with(dataset=...), "missing 'dataset' (the verifier name, e.g. general-flip)"),
        (_with(dataset=""), "'dataset' must be a verifier name such as general-flip; got ''"),
        (
            _with(dataset="math"),
            "'dataset' 'math' is not a known verifier (known: general-flip, general-quality, general-quality_ref)",
        ),
    ],
)
def test_validation_names_source_row_and_field(bad, message):
    rows = [row(i) for i in range(17)] + [bad]
    with pytest.raises(DatasetError) as err:
        du.validate_rows(rows, "data/x.jsonl", VERIFIERS)
    assert str(err.value) == f"data/x.jsonl row 18: {message}"


def test_validation_accepts_good_rows():
    multi = _with(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a joke.\nA short one."},
        ]
    )
    du.validate_rows(
        [row(0), multi, _with(ground_truth=["a", "b"]), _with(dataset="General-Flip")], "src", VERIFIERS
    )
    du.validate_rows([_with(dataset="anything-goes")], "src", None)  # no registry given: any name passes
    with pytest.raises(DatasetError, match="^src: no rows$"):
        du.validate_rows([], "src", VERIFIERS)


def test_error_values_stay_on_one_line():
    long_role = "bot\n" * 50
    with pytest.raises(DatasetError) as err:
        du.validate_rows([_with(messages=[{"role": long_role, "content": "x"}])], "s", None)
    assert "\n" not in str(err.value) and len(str(err.value)) < 150


# --------------------------------------------------------------------------------------------------
# Shipped samples


def test_shipped_samples_validate_and_differ_only_in_dataset():
    flip = du.load_source(str(FLIP_SAMPLE))
    quality = du.load_source(str(QUALITY_SAMPLE))
    du.validate_rows(flip, str(FLIP_SAMPLE), VERIFIERS)
    du.validate_rows(quality, str(QUALITY_SAMPLE), VERIFIERS)
    assert 180 <= len(flip) == len(quality) <= 220
    assert {r["dataset"] for r in flip} == {"general-flip"}
    assert {r["dataset"] for r in quality} == {"general-quality"}
    for f, q in zip(flip, quality, strict=True):
        assert {**f, "dataset": None} == {**q, "dataset": None}
        assert f["ground_truth"] == f["messages"][-1]["content"]
    assert 10 <= sum(len(r["messages"]) > 1 for r in flip) <= 25
    assert len({r["ground_truth"] for r in flip}) == len(flip)  # no duplicate prompts


# --------------------------------------------------------------------------------------------------
# Chat templates and tokenization


@pytest.fixture(scope="module")
def tokenizer(tiny_judge_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_judge_dir)


def render(tokenizer, name: str | None, messages: list[dict]) -> str:
    template = du.get_chat_template(tokenizer, name)
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Write a haiku."},
]


def test_chat_template_selection(tokenizer):
    assert du.get_chat_template(tokenizer, None) == tokenizer.chat_template
    assert du.get_chat_template(tokenizer, "tokenizer") == tokenizer.chat_template
    assert {"chatml", "tulu", "olmo_thinker"} <= set(du.CHAT_TEMPLATES)
    with pytest.raises(
        DatasetError, match="unknown chat template 'llama9'; known: chatml, tulu, olmo_thinker, qwen3"
    ):
        du.get_chat_template(tokenizer, "llama9")

    class NoTemplate:
        chat_template = None

    with pytest.raises(DatasetError, match="the tokenizer has no chat template; pass --chat_template_name"):
        du.get_chat_template(NoTemplate(), None)
    assert du.get_chat_template(NoTemplate(), "chatml") == du.CHAT_TEMPLATES["chatml"]


def test_chatml_and_tulu_rendering(tokenizer):
    assert render(tokenizer, "chatml", CONVERSATION) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tokenizer, "chatml", CONVERSATION) == render(tokenizer, None, CONVERSATION)
    assert render(tokenizer, "tulu", [{"role": "system", "content": "Be kind."}, *CONVERSATION]) == (
        "<|system|>\nBe kind.\n<|user|>\nHi\n<|assistant|>\nHello!<|im_end|>\n<|user|>\nWrite a haiku.\n<|assistant|>\n"
    )


# What Open Instruct's `olmo_thinker` template (open_instruct/dataset_transformation.py, the Olmo 3 era
# version that the published recipe's fork carries) renders for these messages, with EOS "<|im_end|>".
OLMO_THINKER_GOLDEN = [
    (
        [{"role": "user", "content": "Write a haiku about rain.\nKeep it gentle."}],
        True,
        "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku about rain.\nKeep it gentle.<|im_end|>\n<|im_start|>assistant\n<think>",
    ),
    (
        [{"role": "system", "content": "Be kind."}, *CONVERSATION],
        True,
        "<|im_start|>system\nBe kind. You do not currently have access to any functions. <functions></functions>"
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku.<|im_end|>\n<|im_start|>assistant\n<think>",
    ),
    (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        False,
        "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>",
    ),
    (
        [
            {"role": "system", "content": "Tools:", "functions": "[f]"},
            {"role": "user", "content": "Use f.", "functions": "[g]"},
            {"role": "assistant", "content": "Calling.", "function_calls": "f()"},
            {"role": "environment", "content": "42"},
            {"role": "user", "content": "And?"},
        ],
        True,
        "<|im_start|>system\nTools: <functions>[f]</functions><|im_end|>\n"
        "<|im_start|>user\nUse f.\n<functions>[g]</functions><|im_end|>\n"
        "<|im_start|>assistant\nCalling.<function_calls>f()</function_calls><|im_end|>\n"
        "<|im_start|>environment\n42<|im_end|>\n<|im_start|>user\nAnd?<|im_end|>\n<|im_start|>assistant\n<think>",
    ),
]


@pytest.mark.parametrize(("messages", "generation_prompt", "expected"), OLMO_THINKER_GOLDEN)
def test_olmo_thinker_renders_as_open_instruct_does(tokenizer, messages, generation_prompt, expected):
    """Failed before: ours wrote its own system text asking for <think>/<answer> blocks, so the published
    recipe's prompts tokenized differently from upstream's."""
    template = du.get_chat_template(tokenizer, "olmo_thinker")
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert text == expected


# Qwen3's published format, as the Qwen3 chat models' own template renders it (thinking on unless
# enable_thinking=False; reasoning kept only after the last user turn).
QWEN3_GOLDEN = [
    (
        CONVERSATION,
        {},
        True,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku.<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        CONVERSATION,
        {"enable_thinking": False},
        True,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    ),
    (  # a past turn's reasoning is dropped; a system turn is a plain ChatML turn
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
            {"role": "user", "content": "Write a haiku."},
        ],
        {"enable_thinking": True},
        True,
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWrite a haiku.<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (  # the answer to the last question keeps its reasoning, from the text or from reasoning_content
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"},
        ],
        {},
        False,
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nAdd them.\n</think>\n\n4<|im_end|>\n",
    ),
    (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
        ],
        {},
        False,
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nAdd them.\n</think>\n\n4<|im_end|>\n",
    ),
    (  # the last assistant turn gets an empty think block when it has no reasoning
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        {},
        False,
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n",
    ),
]


@pytest.mark.parametrize(("messages", "kwargs", "generation_prompt", "expected"), QWEN3_GOLDEN)
def test_qwen3_renders_the_published_format(tokenizer, messages, kwargs, generation_prompt, expected):
    template = du.get_chat_template(tokenizer, "qwen3")
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
    )
    assert text == expected


def test_template_kwargs_reach_the_template_when_prompts_are_tokenized(tokenizer):
    rows = [{"messages": CONVERSATION[:1], "ground_truth": "x", "dataset": "general-flip"}]
    template = du.get_chat_template(tokenizer, "qwen3")
    (thinking,), _ = du.tokenize_prompts(rows, tokenizer, template, 256)
    (direct,), _ = du.tokenize_prompts(rows, tokenizer, template, 256, {"enable_thinking": False})
    assert tokenizer.decode(thinking.prompt_token_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(direct.prompt_token_ids).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_tokenize_prompts_and_drop_long_ones(tokenizer):
    rows = [
        row(0),
        _with(messages=[{"role": "user", "content": "Write a poem. " * 200}]),
        {**row(2), "dataset": "general-quality"},
    ]
    rows[1]["ground_truth"] = rows[1]["messages"][-1]["content"]
    template = du.get_chat_template(tokenizer, "chatml")
    prompts, dropped = du.tokenize_prompts(rows, tokenizer, template, max_prompt_token_length=64)
    assert dropped == 1 and [p.index for p in prompts] == [0, 2]
    first = prompts[0]
    assert isinstance(first, du.PromptRow)
    expected = tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False, add_generation_prompt=True)
    assert first.prompt_token_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(first.prompt_token_ids) == expected
    assert first.messages == rows[0]["messages"] and first.ground_truth == rows[0]["ground_truth"]
    assert (first.dataset, prompts[1].dataset) == ("general-flip", "general-quality")
    # the limit is inclusive: a prompt exactly max_prompt_token_length long is kept
    n = len(first.prompt_token_ids)
    assert du.tokenize_prompts(rows[:1], tokenizer, template, n)[1] == 0
    assert du.tokenize_prompts(rows[:1], tokenizer, template, n - 1) == ([], 1)
    assert du.tokenize_prompts([], tokenizer, template, 10) == ([], 0)


def test_shipped_sample_tokenizes_end_to_end(tokenizer):
    rows = du.load_mixture([str(FLIP_SAMPLE), "1.0"], ["train"], seed=1, known_verifiers=VERIFIERS)
    template = du.get_chat_template(tokenizer, "olmo_thinker")
    prompts, dropped = du.tokenize_prompts(rows, tokenizer, template, max_prompt_token_length=4096)
    assert dropped == 0 and len(prompts) == len(rows)
    assert all(
        tokenizer.decode(p.prompt_token_ids).endswith("<|im_start|>assistant\n<think>") for p in prompts
    )
