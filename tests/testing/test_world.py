"""The small world's generator: deterministic for a seed, on-task responses show what the instruction asks for,
off-task ones do not, and data/flip_world/ is what the generator writes for seed 0."""

import json
import random
from pathlib import Path

import pytest

from open_instruct.f1 import f1_score
from open_instruct.judge_utils import extract_inferred_instruction
from open_instruct.testing import world
from open_instruct.testing.world_models import write_data

REPO = Path(__file__).resolve().parents[2]


def test_same_seed_same_world_other_seed_other_world():
    assert world.tasks(50, 3) == world.tasks(50, 3)
    assert world.tasks(50, 3) != world.tasks(50, 4)
    task = world.tasks(1, 3)[0]
    assert world.response(task, random.Random(1)) == world.response(task, random.Random(1))


def test_instruction_names_every_feature_of_the_task():
    task = world.Task("poem", "cats", "funny", "children", 3, wording=5)
    text = world.instruction(task)
    for word in ("poem", "cats", "funny", "children", "lines"):
        assert word in text
    assert "3" in text or "three" in text
    assert world.canonical_instruction(task) == "Write a funny poem about cats in 3 lines for children."


def test_on_task_response_shows_form_topic_tone_audience_and_number():
    task = world.Task("list", "bees", "sad", "experts", 4, wording=0)
    text = world.response(task, random.Random(0))
    assert text.startswith("Tips on bees for my fellow experts:")
    assert [line[:2] for line in text.splitlines()[1:]] == ["1.", "2.", "3.", "4."]
    assert any(w in text for w in world.TONES["sad"])


@pytest.mark.parametrize("kind", ["wrong_topic", "wrong_form", "broken_constraint"])
def test_off_task_responses_do_another_task(kind):
    task = world.Task("story", "trains", "calm", "beginners", 2, wording=0)
    text, done = world.off_task(task, kind, random.Random(2))
    assert done != task
    changed = [f for f in ("form", "topic", "tone", "audience", "n") if getattr(done, f) != getattr(task, f)]
    assert len(changed) == 1
    assert {"wrong_topic": "topic", "wrong_form": "form"}.get(kind, changed[0]) == changed[0]


def test_generic_and_echo_do_no_task():
    task = world.tasks(1, 0)[0]
    assert world.off_task(task, "generic", random.Random(0))[0] in world.GENERIC_REPLIES
    assert world.off_task(task, "echo", random.Random(0)) == (world.instruction(task), None)


def test_judge_answer_parses_with_the_project_parser():
    task = world.tasks(1, 9)[0]
    answer = world.flip_answer(task, world.canonical_instruction(task))
    assert extract_inferred_instruction(answer) == world.canonical_instruction(task)
    assert json.loads(answer)["REASONING"].startswith("The reply is a")


def test_the_plain_wording_scores_above_other_instructions():
    """What a perfect judge would reach: the plainest wording against the true one, against another row's."""
    tasks = world.tasks(300, 0)
    own = world.mean_f1((world.canonical_instruction(t), world.instruction(t)) for t in tasks)
    other = world.mean_f1(
        (world.canonical_instruction(t), world.instruction(u))
        for t, u in zip(tasks, tasks[1:] + tasks[:1], strict=True)
    )
    generic = world.mean_f1((world.GENERIC_INSTRUCTION, world.instruction(t)) for t in tasks)
    assert own > 0.65 and other < 0.3 and generic < 0.15
    assert f1_score(world.canonical_instruction(tasks[0]), world.instruction(tasks[0]))["f1"] > 0


def test_checked_in_data_is_the_generators_output(tmp_path):
    write_data(tmp_path, seed=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in (REPO / "data" / "flip_world").iterdir())
    for name in names:
        assert (tmp_path / name).read_text() == (REPO / "data" / "flip_world" / name).read_text(), name


def test_rewardbench_rows_have_one_chosen_and_three_distinct_rejected():
    rows = [
        json.loads(line) for line in (REPO / "data/flip_world/rewardbench.jsonl").read_text().splitlines()
    ]
    assert {r["subset"] for r in rows} == {"focus", "constraints"}
    for r in rows:
        assert len(r["chosen"]) == 1 and len(set(r["rejected"])) == 3 and r["chosen"][0] not in r["rejected"]


def test_instructions_read_back_as_their_task():
    for task in world.tasks(500, 5):
        assert world.parse_instruction(world.instruction(task)) == world.Task(
            task.form, task.topic, task.tone, task.audience, task.n, wording=0
        )
    assert world.parse_instruction("Tell me a joke.") is None
    assert world.parse_instruction("Write a poem about trains.").topic == "trains"  # not "rain"


def test_only_on_task_responses_do_the_task():
    rng = random.Random(4)
    tasks = world.tasks(500, 6)
    assert all(world.does_task(t, world.response(t, rng)) for t in tasks)
    for kind in ("wrong_topic", "wrong_form", "broken_constraint", "generic", "echo"):
        assert not any(world.does_task(t, world.off_task(t, kind, rng)[0]) for t in tasks), kind
    pairs = [(world.instruction(t), world.response(t, rng)) for t in tasks[:10]]
    pairs += [(world.instruction(t), world.off_task(t, "generic", rng)[0]) for t in tasks[10:40]]
    assert world.on_task_rate(pairs) == 0.25
