"""The world's builders: the judge's training rows use the project's real FLIP prompt, the policy's mix of
kinds, training is deterministic for a seed, and the judge report's arithmetic."""

import random

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
