"""The downstream task mapping: short and published oe-eval names, unknown names, the README's table, and the
lm-eval tasks it names existing in the installed lm-eval."""

from pathlib import Path

import pytest

from open_instruct.cli_utils import UserError
from open_instruct.evaluation.downstream_tasks import TASKS, readme_table, resolve, split_names

REPO = Path(__file__).resolve().parent.parent.parent
PUBLISHED = (
    "ifeval::hamish_zs_reasoning_deepseek,bbh:cot::hamish_zs_reasoning_deepseek_v2,"
    "gpqa:0shot_cot::hamish_zs_reasoning_deepseek,minerva_math::hamish_zs_reasoning_deepseek,"
    "minerva_math_500::hamish_zs_reasoning_deepseek"
)


def test_the_published_oe_eval_names_map_to_lm_eval_tasks():
    chosen = resolve(split_names(PUBLISHED))
    assert [t.name for t in chosen] == ["ifeval", "bbh_cot", "gpqa_cot", "minerva_math", "math_500"]
    assert [t.lm_eval for t in chosen] == [
        "ifeval",
        "bbh_cot_zeroshot",
        "gpqa_main_cot_zeroshot",
        "minerva_math",
        "minerva_math500",
    ]
    # oe-eval's configurations are zero-shot: lm-eval's 4-shot Minerva default is overridden
    assert {t.name: t.num_fewshot for t in chosen}["minerva_math"] == 0


def test_short_names_commas_and_spaces_and_duplicates():
    chosen = resolve(split_names(["ifeval, math_500", "ifeval::hamish_zs_reasoning_deepseek"]))
    assert [t.name for t in chosen] == ["ifeval", "math_500"]
    assert chosen[1].metric == "math_verify,none"


def test_an_unknown_name_is_one_line_listing_the_known_ones():
    with pytest.raises(UserError) as e:
        resolve(["ifeval", "mmlu"])
    message = str(e.value)
    assert "\n" not in message and "'mmlu'" in message
    assert "known: ifeval, bbh_cot, gpqa_cot, minerva_math, math_500" in message


def test_a_users_own_task_is_taken_as_its_yaml_says():
    chosen = resolve(["my_task", "gpqa_cot"], user_tasks={"my_task"})
    assert (chosen[0].lm_eval, chosen[0].metric, chosen[0].num_fewshot) == ("my_task", None, None)
    with pytest.raises(UserError, match="no task given"):
        resolve([])


def test_the_readme_table_is_the_modules():
    assert readme_table() in (REPO / "README.md").read_text()


def test_every_mapped_lm_eval_task_exists_in_the_installed_lm_eval():
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    assert {t.lm_eval for t in TASKS} <= known
