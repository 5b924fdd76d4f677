"""The world's builders: the judge's training rows use the project's real FLIP prompt, the policy's mix of
kinds, training and a whole (reduced) build are deterministic for a seed; and the cache of built worlds: where
it is, what its key follows, one build per key even with two builders at once."""

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from open_instruct import judge_utils
from open_instruct.testing import world, world_models
from open_instruct.testing.tiny_models import build_model, build_tokenizer


def test_judge_rows_are_the_real_flip_prompt_and_a_parsable_answer():
    rng = random.Random(0)
    task = world.tasks(1, 0)[0]
    messages, answer = world_models.judge_example(task, rng)
    assert messages[0]["content"] == judge_utils.flip_messages("x")[0]["content"]  # prompts/FLIP_SYSTEM
    assert "<response>" in messages[1]["content"]
    assert judge_utils.extract_inferred_instruction(answer) in (
        world.canonical_instruction(task),
        world.GENERIC_INSTRUCTION,
    )


def test_policy_rows_follow_the_mix():
    rng = random.Random(1)
    tasks = world.tasks(2000, 1)
    on = sum(world.does_task(t, world_models.policy_example(t, rng)[1]) for t in tasks) / len(tasks)
    assert abs(on - world_models.POLICY_MIX["on_task"]) < 0.03


def test_the_answer_loss_is_transformers_loss_and_its_gradient():
    """answer_loss skips the logits of prompt positions: the same loss and gradients as transformers' own."""
    tokenizer = build_tokenizer(vocab_size=600, seed=0, lines=world_models.tokenizer_corpus(0)[:400])
    model = build_model(tokenizer, 64, 1, seed=3)
    ids = torch.randint(5, 600, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a padded row
    labels = torch.full_like(ids, -100)
    labels[0, 4:] = ids[0, 4:]
    labels[1, 10:] = ids[1, 10:]
    labels[2, 6:9] = ids[2, 6:9]
    grads = []
    for answer_only in (False, True):
        model.zero_grad()
        if answer_only:
            loss = world_models.answer_loss(model, ids, mask, labels)
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (want, want_grads), (got, got_grads) = grads
    assert abs(got - want) < 1e-5 and want > 0
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got_grads, want_grads, strict=True))


def test_training_is_deterministic_for_a_seed():
    tokenizer = build_tokenizer(vocab_size=600, seed=0, lines=world_models.tokenizer_corpus(0)[:400])
    rng = random.Random(0)
    examples = [
        world_models.encode(tokenizer, *world_models.policy_example(t, rng)) for t in world.tasks(40, 0)
    ]
    states = []
    for _ in range(2):
        model = build_model(tokenizer, 64, 1, seed=3)
        world_models.train(model, examples, steps=3, batch_size=4, lr=1e-3, seed=5, desc="t")
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = build_model(tokenizer, 64, 1, seed=3)
    world_models.train(other, examples, steps=3, batch_size=4, lr=1e-3, seed=6, desc="t")
    assert not all(torch.equal(states[0][k], other.state_dict()[k]) for k in states[0])


def test_source_fingerprint_is_stable():
    assert world_models.source_fingerprint() == world_models.source_fingerprint()
    assert len(world_models.source_fingerprint()) == 16


REDUCED = {"tasks": 60, "judge_steps": 3, "policy_steps": 3, "report_rows": 4}


def files_of(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_reduced_world_is_the_same_byte_for_byte_when_built_twice(tmp_path):
    """The cache can only hide a change if a build is not a function of its inputs: two builds of a reduced
    world with one seed give the same files (the report less its timing); another seed gives other weights."""
    reports = [world_models.make_world(tmp_path / name, seed=0, **REDUCED) for name in ("a", "b")]
    for report in reports:
        report.pop("build_seconds")
    assert reports[0] == reports[1]
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    a.pop("report.json"), b.pop("report.json")
    assert "judge/model.safetensors" in a and "policy/tokenizer.json" in a
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a), [k for k in a if a[k] != b.get(k)]
    world_models.make_world(tmp_path / "c", seed=1, **REDUCED)
    assert files_of(tmp_path / "c")["judge/model.safetensors"] != a["judge/model.safetensors"]


def stand_in_build(builds: list, seconds: float = 0.0):
    """make_world's files without the training (the test above covers that); each call is noted in `builds`."""

    def build(out, seed):
        builds.append(seed)
        time.sleep(seconds)
        for model in ("judge", "policy"):
            (out / model).mkdir(parents=True)
            (out / model / "model.safetensors").write_bytes(f"{model} {seed}".encode())
        (out / "report.json").write_text("{}")
        report = ("rows", "parse_rate", "f1_true", "f1_ceiling", "f1_mismatched", "build_seconds")
        return dict.fromkeys(report, 0)

    return build


def test_the_world_is_built_once_per_source_and_copied_from_the_cache(tmp_path, monkeypatch):
    builds = []
    monkeypatch.setenv("FLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(world_models, "make_world", stand_in_build(builds))
    first = world_models.build_world(tmp_path / "checkout1" / "world", quiet=True)
    second = world_models.build_world(tmp_path / "checkout2" / "world", quiet=True)
    assert builds == [0] and files_of(first) == files_of(second)
    assert (second / "judge" / "model.safetensors").read_bytes() == b"judge 0" and (
        second / "world_spec.json"
    ).is_file()
    (second / "judge" / "model.safetensors").write_bytes(b"damaged")  # a copy cut short: no stamp
    (second / "world_spec.json").unlink()
    assert files_of(world_models.build_world(second, quiet=True)) == files_of(first) and builds == [0]
    monkeypatch.setattr(world_models, "source_fingerprint", lambda: "changed-builder")
    world_models.build_world(second, quiet=True)
    assert builds == [0, 0]  # a changed builder is built again
    entries = sorted(p.name for p in (tmp_path / "cache" / "flip-world").iterdir() if p.is_dir())
    assert len(entries) == 2 and "changed-builder-seed0" in entries


def test_the_cache_is_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.delenv("FLIP_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert world_models.cache_root() == tmp_path / "home" / ".cache" / "open-instruct-flip"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert world_models.cache_root() == tmp_path / "xdg" / "open-instruct-flip"
    monkeypatch.setenv("FLIP_CACHE_DIR", str(tmp_path / "mine"))
    assert world_models.cache_root() == tmp_path / "mine"


def test_the_fingerprint_follows_the_model_builder_it_calls_and_nothing_else(monkeypatch):
    from open_instruct.testing import tiny_models

    before = world_models.source_fingerprint()
    monkeypatch.setattr(
        tiny_models, "build_arch_model", lambda *a, **k: None
    )  # another architecture's builder
    assert world_models.source_fingerprint() == before
    monkeypatch.setattr(tiny_models, "SPECIAL_TOKENS", [*tiny_models.SPECIAL_TOKENS, "<|x|>"])
    assert world_models.source_fingerprint() != before


def test_the_fingerprint_follows_the_libraries_that_compute_the_world(monkeypatch):
    import importlib.metadata as md

    before = world_models.source_fingerprint()
    real = md.version
    monkeypatch.setattr(md, "version", lambda name: "0.0.1" if name == "torch" else real(name))
    assert world_models.source_fingerprint() != before


def test_a_world_is_built_only_with_its_seed_and_sources(tmp_path, monkeypatch):
    out = tmp_path / "world"
    assert not world_models.is_built(out)
    out.mkdir()
    (out / "world_spec.json").write_text(json.dumps({"seed": 0, "source": world_models.source_fingerprint()}))
    assert world_models.is_built(out) and not world_models.is_built(out, seed=1)
    monkeypatch.setattr(world_models, "source_fingerprint", lambda: "edited")
    assert not world_models.is_built(out)


def test_two_builders_at_once_train_the_world_once(tmp_path, monkeypatch):
    """A test run's background build and a launch script may ask at the same moment: the cache entry's lock
    makes the second wait for the first and copy its result."""
    builds = []
    monkeypatch.setenv("FLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(world_models, "make_world", stand_in_build(builds, seconds=0.5))
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: world_models.build_world(tmp_path / f"w{i}", quiet=True), range(2)))
    assert builds == [0] and files_of(outs[0]) == files_of(outs[1])
