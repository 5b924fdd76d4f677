"""Training state: the prompt sampler (epochs, reproducible from the seed, resumable from its saved state), the
resume identity check, the atomic save, and the metrics log rewritten after the saved step."""

import json

import pytest

from open_instruct import train_state
from open_instruct.cli_utils import RunFailure, UserError
from open_instruct.train_state import IDENTITY_FLAGS, PromptSampler, TrainerState, check_identity


def test_sampler_visits_every_prompt_once_per_epoch_in_a_seeded_order():
    sampler = PromptSampler(list(range(5)), seed=3)
    first, second = sampler.take(5), sampler.take(5)
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4] and sampler.state()["epoch"] == 2
    assert first == PromptSampler(list(range(5)), seed=3).take(5)  # same seed, same order
    assert first != PromptSampler(list(range(5)), seed=4).take(5)  # another seed, another order


def test_a_take_can_span_two_epochs():
    sampler = PromptSampler(list(range(3)), seed=0)
    taken = sampler.take(2) + sampler.take(2)
    assert sorted(taken[:3]) == [0, 1, 2] and sampler.state()["epoch"] == 2


def test_a_loaded_sampler_continues_exactly_where_the_saved_one_was():
    a = PromptSampler(list(range(7)), seed=1)
    a.take(4)
    saved = json.loads(json.dumps(a.state()))  # through JSON, as trainer.json stores it
    b = PromptSampler(list(range(7)), seed=1)
    b.load(saved)
    assert [a.take(3) for _ in range(5)] == [b.take(3) for _ in range(5)]


def test_identity_check_names_the_flag_that_changed():
    cfg = {flag: f"value-{flag}" for flag in IDENTITY_FLAGS}
    assert check_identity(cfg, dict(cfg)) is None
    problem = check_identity(cfg, {**cfg, "seed": 2})
    assert problem.startswith("--seed was 'value-seed' when the saved state was written and is 2 now")
    assert "new --output_dir" in problem


def test_a_state_becomes_latest_only_when_committed(tmp_path):
    assert train_state.latest(tmp_path) is None
    tmp = train_state.begin(tmp_path, 3)
    (tmp / "learner").mkdir()
    assert train_state.latest(tmp_path) is None  # written but not committed: invisible
    train_state.commit(tmp_path, tmp, TrainerState(3, {"pos": 1}, {"seed": 1}))
    path, state = train_state.latest(tmp_path)
    assert path.name == "step_3" and state.step == 3 and state.sampler == {"pos": 1}


def test_older_states_are_pruned(tmp_path):
    for step in (1, 2, 3):
        train_state.commit(tmp_path, train_state.begin(tmp_path, step), TrainerState(step, {}, {}))
    assert sorted(p.name for p in (tmp_path / "state").glob("step_*")) == ["step_2", "step_3"]


@pytest.mark.parametrize("tail", ["", '{"step": 5, "cut sho'])
def test_metrics_after_the_saved_step_are_dropped(tmp_path, tail):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 5)) + tail)
    assert [r["step"] for r in train_state.truncate_jsonl(log, 2)] == [1, 2]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def save(root, step: int, shard: bytes = b"weights" * 100) -> None:
    tmp = train_state.begin(root, step)
    (tmp / "learner" / "global_step").mkdir(parents=True)
    (tmp / "learner" / "global_step" / "mp_rank_00_model_states.pt").write_bytes(shard)
    train_state.commit(root, tmp, TrainerState(step, {"pos": step}, {"seed": 1}), keep=3)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda s: (s / "learner/global_step/mp_rank_00_model_states.pt").unlink(), "mp_rank_00_model_states.pt is missing"),
        (lambda s: (s / "learner/global_step/mp_rank_00_model_states.pt").write_bytes(b"cut"), "has 3 bytes, 700 were written"),
        (lambda s: (s / "learner/global_step/mp_rank_00_model_states.pt").write_bytes(b"X" * 700), "does not match its checksum"),
        (lambda s: (s / "trainer.json").write_text('{"step": 3, "samp'), "trainer.json"),
        (lambda s: (s / "manifest.json").unlink(), "manifest.json is missing"),
    ],
)  # fmt: skip
def test_a_damaged_newest_state_is_named_and_the_one_before_is_used(tmp_path, damage, named):
    for step in (1, 2, 3):
        save(tmp_path, step)
    damage(tmp_path / "state" / "step_3")
    said = []
    path, state = train_state.latest(tmp_path, report=said.append)
    assert path.name == "step_2" and state.step == 2
    assert len(said) == 1 and said[0].startswith("step_3 is damaged (") and named in said[0], said
    assert said[0].endswith("resuming from step_2 instead")


def test_no_usable_state_is_refused_never_a_silent_fresh_start(tmp_path):
    save(tmp_path, 1)
    (tmp_path / "state" / "step_1" / "trainer.json").write_text("")
    with pytest.raises(UserError, match=r"no usable saved state \(step_1 is damaged \(trainer.json"):
        train_state.latest(tmp_path)


def test_a_state_never_committed_is_not_resumed_from(tmp_path):
    save(tmp_path, 1)
    tmp = train_state.begin(tmp_path, 2)  # interrupted before its commit
    (tmp / "trainer.json").write_text("{}")
    assert train_state.latest(tmp_path)[1].step == 1


def test_a_full_disk_while_saving_keeps_the_previous_state(tmp_path, monkeypatch):
    import errno

    save(tmp_path, 1)

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_state, "_write_atomic", full)
    tmp = train_state.begin(tmp_path, 2)
    with pytest.raises(RunFailure) as e:
        train_state.commit(tmp_path, tmp, TrainerState(2, {}, {"seed": 1}))
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message and "GiB free there" in message
    assert str(tmp_path / "state") in message and "previous state is intact" in message
    monkeypatch.undo()
    assert not tmp.exists() and train_state.latest(tmp_path)[1].step == 1
