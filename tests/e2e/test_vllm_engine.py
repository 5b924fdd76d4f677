"""Tests for the rollout role: vLLM engines in Ray actors, and weight sync into them from a learner (the
sender's chunking is tested on its own in test_weight_sync.py).

The tests share one engine (about 20 s to start on CPU) serving the tiny seed-0 model; every check
compares against Hugging Face transformers running the same weights in float32.
"""

import time

import pytest
import torch

pytest.importorskip("vllm")

from open_instruct import vllm_utils, weight_sync  # noqa: E402

PROMPTS = ["write a poem about cats", "explain python code in three steps", "give me five reasons why"]


# --------------------------------------------------------------------------------------------------
# Slow: a real engine


def _prompt_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _hf_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(response[k] | prompt + response[:k]) under an HF model sampled at `temperature`."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def _hf_greedy(model, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        gen = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens
        )
        out.append(gen[0, len(p) :].tolist())
    return out


def _vllm_greedy(engine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    import ray

    samples = ray.get(engine.generate.remote(prompts, 1, 0.0, max_tokens, None, None))
    return [s[0]["token_ids"] for s in samples]


def _other_model(tokenizer, seed: int):
    """A model with the same shapes but different weights. The 2-D weights get a larger spread than the
    default init, so greedy decoding depends on the whole network rather than echoing the last token
    through the tied embeddings (which is what a freshly initialised tiny model does)."""
    from open_instruct.testing.tiny_models import build_model

    model = build_model(tokenizer, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    return model


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tokenizer(tiny_judge_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_judge_dir)


@pytest.fixture(scope="module")
def hf_base(tiny_judge_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_judge_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(ray_local, tiny_judge_dir):
    (engine,) = vllm_utils.create_vllm_engines(1, 1, str(tiny_judge_dir), seed=0, max_model_len=256)
    return engine


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [_prompt_ids(tokenizer, t) for t in PROMPTS]


def test_generate_n_samples_with_aligned_logprobs_matching_hf(engine, prompts, hf_base):
    import ray

    out = ray.get(engine.generate.remote(prompts, 3, 1.0, 12, None, 123))
    assert len(out) == len(prompts)
    for prompt, samples in zip(prompts, out, strict=True):
        assert len(samples) == 3
        assert len({tuple(s["token_ids"]) for s in samples}) > 1  # n distinct samples, not one copied
        for s in samples:
            assert set(s) == {"token_ids", "logprobs", "finish_reason", "text", "weight_versions"}
            assert s["weight_versions"] == (0, 0)  # the initial weights: no update yet
            assert s["finish_reason"] in ("stop", "length")
            assert len(s["token_ids"]) == len(s["logprobs"]) > 0
            if s["finish_reason"] == "length":
                assert len(s["token_ids"]) == 12
            expected = _hf_logprobs(hf_base, prompt, s["token_ids"])
            torch.testing.assert_close(torch.tensor(s["logprobs"]), expected, atol=1e-3, rtol=0)
    # Same seed, same samples (the call reseeds the sampler); another seed, other samples.
    assert ray.get(engine.generate.remote(prompts, 3, 1.0, 12, None, 123)) == out
    assert ray.get(engine.generate.remote(prompts, 3, 1.0, 12, None, 124)) != out


def test_logprobs_are_of_the_tempered_distribution(engine, prompts, hf_base):
    """Failed before: vLLM reported the untempered logprobs (its default raw mode) of tokens it sampled at
    T = 0.6, so the truncated importance weight compared two distributions."""
    import ray

    for prompt, samples in zip(
        prompts, ray.get(engine.generate.remote(prompts, 2, 0.6, 12, None, 7)), strict=True
    ):
        for s in samples:
            expected = _hf_logprobs(hf_base, prompt, s["token_ids"], temperature=0.6)
            torch.testing.assert_close(torch.tensor(s["logprobs"]), expected, atol=1e-3, rtol=0)


def test_stop_string_keeps_tokens_and_logprobs_aligned(engine, prompts, tokenizer):
    import ray

    out = ray.get(engine.generate.remote(prompts, 2, 1.0, 64, ["e"], 7))
    stopped = [s for samples in out for s in samples if s["finish_reason"] == "stop"]
    assert stopped, "a one-letter stop string should end some of the random samples"
    for s in stopped:
        assert len(s["token_ids"]) == len(s["logprobs"])
        assert s["text"].endswith("e")  # the stop string is kept in the text
        assert "e" in tokenizer.decode(s["token_ids"][-1:])  # and the token that completed it is kept


def test_text_decoded_without_engine_detokenizing_matches_vllm_text(engine, prompts):
    """Without stop strings the engine skips detokenizing and the actor decodes each sample; a stop string
    that never matches makes vLLM detokenize the same seeded samples itself."""
    import ray

    ours = ray.get(engine.generate.remote(prompts, 4, 1.0, 16, None, 99))
    vllms = ray.get(engine.generate.remote(prompts, 4, 1.0, 16, ["\x00never\x00"], 99))
    assert [[s["token_ids"] for s in g] for g in ours] == [[s["token_ids"] for s in g] for g in vllms]
    assert [[s["text"] for s in g] for g in ours] == [[s["text"] for s in g] for g in vllms]
    assert any(s["text"] for g in ours for s in g)


def test_weight_sync_makes_engine_generate_like_the_new_model(engine, prompts, tokenizer, hf_base):
    """The key property: after a push, the engine computes with exactly the pushed weights."""
    import ray

    before = _vllm_greedy(engine, prompts, 16)
    assert before == _hf_greedy(hf_base, prompts, 16)

    new = _other_model(tokenizer, seed=1)
    sender = weight_sync.WeightSyncSender([engine], chunk_bytes=64 * 1024)  # several chunks per push
    try:
        sender.send(new.named_parameters(), version=1)
        after = _vllm_greedy(engine, prompts, 16)
        assert after == _hf_greedy(new, prompts, 16)
        assert after != before
        sample = ray.get(engine.generate.remote(prompts[:1], 1, 1.0, 12, None, 5))[0][0]
        expected = _hf_logprobs(new, prompts[0], sample["token_ids"])
        torch.testing.assert_close(torch.tensor(sample["logprobs"]), expected, atol=1e-3, rtol=0)
        assert ray.get(engine.get_weight_version.remote()) == "1"

        sender.send(hf_base.named_parameters(), version=2)  # and back
        assert _vllm_greedy(engine, prompts, 16) == before
    finally:
        sender.close()


def test_rollout_arriving_mid_update_waits_for_it(engine, prompts):
    """Rollouts and weight pushes come from different callers; a rollout must not run on half-loaded layers."""
    import ray

    before = _vllm_greedy(engine, prompts, 8)
    ray.get(engine.start_weight_update.remote())
    pending = engine.generate.remote(prompts, 1, 0.0, 8, None, None)
    ready, _ = ray.wait([pending], timeout=2.0)
    assert not ready
    ray.get(engine.finish_weight_update.remote())  # no chunks: every layer keeps its weights
    assert [s[0]["token_ids"] for s in ray.get(pending)] == before


class _FakeLearner:
    """What the driver helpers need from a learner actor: `rank` and `named_weights()`."""

    def __init__(self, model_dir: str, seed: int) -> None:
        from transformers import AutoTokenizer

        self.rank = 0
        self.model = _other_model(AutoTokenizer.from_pretrained(model_dir), seed)

    def named_weights(self):
        for name, param in self.model.named_parameters():
            yield name, param.detach()

    def greedy(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        return _hf_greedy(self.model, prompts, max_tokens)


def test_driver_helpers_sync_from_learner_actor(engine, prompts, tiny_judge_dir):
    import sys

    import ray
    from ray import cloudpickle

    # The tests directory is not a package the Ray workers can import: ship this module's code by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    learner = ray.remote(_FakeLearner).options(num_cpus=1).remote(str(tiny_judge_dir), 2)
    try:
        weight_sync.init_weight_sync([learner], [engine])
        weight_sync.sync_weights([learner], [engine], version=3)
        assert _vllm_greedy(engine, prompts, 16) == ray.get(learner.greedy.remote(prompts, 16))
        assert ray.get(engine.get_weight_version.remote()) == "3"
        # samples say which weights generated them
        assert ray.get(engine.generate.remote(prompts[:1], 1, 1.0, 4, None, 0))[0][0]["weight_versions"] == (
            3,
            3,
        )
    finally:
        ray.kill(learner)


def _update_during_rollout(engine, prompts, max_tokens: int) -> tuple[bool, bool, list]:
    """Start a long sampled rollout, then (0.2 s in) an empty weight update. Returns whether the rollout
    was still running when the update was asked for, whether the update completed within 0.3 s while
    the rollout was still running, and the rollout's samples."""
    import ray

    # 16 samples of many tokens: a second or more here (the longest one rarely meets EOS early).
    pending = engine.generate.remote(prompts, 4, 1.0, max_tokens, None, 5)
    time.sleep(0.2)
    running = not ray.wait([pending], timeout=0)[0]
    started = engine.start_weight_update.remote()
    done_early = bool(ray.wait([started], timeout=0.3)[0])
    if done_early:
        ray.get(engine.finish_weight_update.remote())  # no chunks: every layer keeps its weights
        done_early = not ray.wait([pending], timeout=0)[0]
    else:
        ray.get(started)
        ray.get(engine.finish_weight_update.remote())
    return running, done_early, ray.get(pending)


def test_update_waits_for_the_rollout_in_flight_by_default(engine, prompts):
    running, done_early, _ = _update_during_rollout(engine, prompts, 224)
    assert running, "the rollout should still be generating 0.2 s in"
    assert not done_early


def test_inflight_updates_land_between_decode_steps(engine, prompts, tiny_judge_dir):
    """Last in this file: it replaces the shared engine (the local cluster has CPUs for one at a time)."""
    import ray

    ray.kill(engine)
    (inflight,) = vllm_utils.create_vllm_engines(
        1, 1, str(tiny_judge_dir), seed=0, max_model_len=512, inflight_updates=True
    )
    try:
        ray.get(inflight.generate.remote(prompts, 4, 1.0, 400, None, 4))  # warm-up: the first steps are slow
        running, done_early, samples = _update_during_rollout(inflight, prompts, 400)
        assert running and done_early, "the update should complete while the rollout is still generating"
        # An update that changes nothing leaves the rollout as if none had happened.
        assert samples == ray.get(inflight.generate.remote(prompts, 4, 1.0, 400, None, 5))
        assert max(len(s["token_ids"]) for g in samples for s in g) == 400
    finally:
        ray.kill(inflight)
