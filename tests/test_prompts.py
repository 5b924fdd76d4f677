import pytest

from open_instruct import judge_utils
from open_instruct.prompts import PROMPTS_DIR, load_prompt, placeholders, render

EXPECTED = {
    "FLIP_SYSTEM": set(),
    "FLIP_USER": {"response"},
    "FLIP_USER_MULTITURN": {"context", "response"},
    "llmjudge_pointwise_rating_SYSTEM": set(),
    "llmjudge_pointwise_rating_USER": {"prompt", "response"},
    "llmjudge_pointwise_rating_ref_SYSTEM": set(),
    "llmjudge_pointwise_rating_ref_USER": {"prompt", "response", "reference"},
    "llmjudge_pairwise_ranking_SYSTEM": set(),
    "llmjudge_pairwise_ranking_USER": {"prompt", "response1", "response2"},
    "llmjudge_listwise_ranking_SYSTEM": set(),
    "llmjudge_listwise_ranking_USER": {"prompt", "response_list"},
}


def test_every_template_exists_with_its_placeholders():
    assert {p.stem for p in PROMPTS_DIR.glob("*.prompt")} == set(EXPECTED)
    for name, fields in EXPECTED.items():
        assert placeholders(load_prompt(name)) == fields, name


@pytest.mark.parametrize(
    "system,keys",
    [
        ("FLIP_SYSTEM", ['"REASONING"', '"INFERRED INSTRUCTION"']),
        ("llmjudge_pointwise_rating_SYSTEM", ['"REASONING"', '"SCORE"']),
        ("llmjudge_pointwise_rating_ref_SYSTEM", ['"REASONING"', '"SCORE"']),
        ("llmjudge_pairwise_ranking_SYSTEM", ['"REASONING"', '"BETTER_RESPONSE"']),
        ("llmjudge_listwise_ranking_SYSTEM", ['"REASONING"', '"BEST_RESPONSE_INDEX"']),
    ],
)
def test_system_prompts_ask_for_their_json_keys(system, keys):
    text = load_prompt(system)
    for key in keys:
        assert key in text


def test_render_is_single_pass_and_strict():
    # a response that itself contains a placeholder is inserted verbatim, not re-filled
    out = render("<r>{response}</r>", response="see {response} and {prompt}")
    assert out == "<r>see {response} and {prompt}</r>"
    with pytest.raises(KeyError):
        render("{prompt} {response}", prompt="x")
    with pytest.raises(KeyError):
        render("{prompt}", prompt="x", response="y")


def test_flip_messages_single_and_multi_turn():
    single = judge_utils.flip_messages("Roses are red.")
    assert [m["role"] for m in single] == ["system", "user"]
    assert single[0]["content"] == load_prompt("FLIP_SYSTEM")
    assert "Roses are red." in single[1]["content"]
    context = [
        {"role": "system", "content": "SECRET SYSTEM"},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
    ]
    multi = judge_utils.flip_messages("Roses are red.", context)
    assert "user: Hi there" in multi[1]["content"] and "assistant: Hello!" in multi[1]["content"]
    assert "SECRET SYSTEM" not in multi[1]["content"]


def test_baseline_messages_fill_every_field():
    assert "PROMPT" in judge_utils.pointwise_messages("PROMPT", "RESP")[1]["content"]
    assert "REF" in judge_utils.pointwise_messages("PROMPT", "RESP", "REF")[1]["content"]
    pair = judge_utils.pairwise_messages("P", "first", "second")[1]["content"]
    assert pair.index("first") < pair.index("second")
    lst = judge_utils.listwise_messages("P", ["r0", "r1", "r2"])[1]["content"]
    assert '<reply index="2">\nr2\n</reply>' in lst
