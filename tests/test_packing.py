"""The step plan and micro-batch tensors: bounded packing, equal micro-batch counts on every rank, row
layouts aligned with next-token positions, and log-probs (tempered, float32 a chunk at a time)."""

import pytest
import torch

from open_instruct.packing import Sample, collate, pack, plan_step, token_logprobs


def sample(q: int, r: int, adv: float = 1.0) -> Sample:
    return Sample(list(range(10, 10 + q)), list(range(100, 100 + r)), [-float(i) for i in range(r)], adv)


@pytest.mark.parametrize("packed_rows", [False, True])
def test_pack_bounds_the_micro_batch_tensor_and_keeps_every_sample(packed_rows):
    samples = [sample(5, 5), sample(3, 2), sample(8, 8), sample(1, 1), sample(20, 20), sample(2, 2)]
    bins = pack(samples, pack_length=16, packed_rows=packed_rows)
    assert sorted(id(s) for b in bins for s in b) == sorted(id(s) for s in samples)
    for b in bins:
        tensor_tokens = sum(s.length for s in b) if packed_rows else len(b) * max(s.length for s in b)
        assert tensor_tokens <= 16 or len(b) == 1  # an over-long sample gets a bin of its own
    # padded rows fit fewer samples: 10 + 5 real tokens fill 2 x 10 padded ones
    assert len(pack([sample(5, 5), sample(3, 2)], 16, packed_rows)) == (1 if packed_rows else 2)


def test_collate_pads_rows_aligned_with_next_token_positions():
    batch = collate([sample(3, 2, adv=0.5), sample(1, 3, adv=-1.0)], pad_id=0, device="cpu")
    # sample 0: ids [10 11 12 100 101]; positions 2 and 3 predict the response tokens
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 100, 101]
    assert batch["mask"][0].tolist() == [0, 0, 1, 1]
    assert batch["vllm_logprobs"][0].tolist() == [0, 0, -0.0, -1.0]
    # sample 1: ids [10 100 101 102 pad]; positions 0..2 predict the response, padding is masked
    assert batch["input_ids"][1].tolist() == [10, 100, 101, 102, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0]
    assert batch["mask"][1].tolist() == [1, 1, 1, 0]
    assert batch["advantages"].tolist() == [[0.5] * 4, [-1.0] * 3 + [0.0]]  # padding: none
    assert batch["position_ids"] is None


def test_collate_packs_samples_into_one_row_aligned_with_next_token_positions():
    batch = collate([sample(3, 2, adv=0.5), sample(1, 3, adv=-1.0)], pad_id=0, device="cpu", packed_rows=True)
    # one row, no padding: [10 11 12 100 101 | 10 100 101 102], positions restarting at each sample
    assert batch["input_ids"].tolist() == [[10, 11, 12, 100, 101, 10, 100, 101, 102]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3]] and batch["attention_mask"] is None
    # position t predicts token t + 1: positions 2, 3 (sample 0) and 5, 6, 7 (sample 1) predict responses;
    # position 4 predicts the next sample's first token and is not in the loss
    assert batch["mask"].tolist() == [[0, 0, 1, 1, 0, 1, 1, 1]]
    assert batch["vllm_logprobs"].tolist() == [[0, 0, -0.0, -1.0, 0, -0.0, -1.0, -2.0]]
    assert batch["advantages"].tolist() == [[0.5] * 5 + [-1.0] * 3]


@pytest.mark.parametrize("packed_rows", [False, True])
def test_an_empty_micro_batch_is_a_row_with_nothing_in_the_loss(packed_rows):
    batch = collate([], pad_id=7, device="cpu", packed_rows=packed_rows)
    assert batch["input_ids"].tolist() == [[7, 7]] and batch["mask"].sum() == 0


def lengths(micro: list[Sample]) -> int:
    return sum(s.length for s in micro)


@pytest.mark.parametrize("packed_rows", [False, True])
@pytest.mark.parametrize(
    ("n", "world", "minibatches"), [(9, 4, 1), (5, 4, 1), (1, 4, 1), (16, 2, 2), (7, 3, 2)]
)
def test_step_plan_gives_every_rank_the_same_number_of_micro_batches(n, world, minibatches, packed_rows):
    """Failed before global packing: each rank packed its own shard, so ranks ran different numbers of
    passes (a hang under ZeRO), and a rank with an empty shard ran none."""
    g = torch.Generator().manual_seed(n)
    samples = [
        sample(
            int(torch.randint(1, 12, (1,), generator=g)),
            int(torch.randint(1, 20, (1,), generator=g)),
            float(i),
        )
        for i in range(n)
    ]
    plan = plan_step(samples, world, minibatches, pack_length=32, packed_rows=packed_rows)
    assert len(plan) == world and all(rank.packed_rows == packed_rows for rank in plan)
    for m in range(minibatches):
        counts = {len(rank.micro_batches[m]) for rank in plan}
        assert len(counts) == 1 and counts.pop() >= 1
        # the loss normaliser: mini-batch m's response tokens over all ranks, divided by the ranks
        expected = sum(len(s.response_ids) for s in samples[m::minibatches]) / world
        assert all(rank.num_tokens[m] == pytest.approx(expected) for rank in plan)
    dealt = [s for rank in plan for micros in rank.micro_batches for micro in micros for s in micro]
    assert sorted(map(id, dealt)) == sorted(map(id, samples))  # every sample once
    for micro in (micro for rank in plan for micros in rank.micro_batches for micro in micros):
        assert collate(micro, 0, "cpu", packed_rows)["input_ids"].numel() <= 32


def test_step_plan_balances_tokens_across_ranks():
    samples = [sample(10, 20) for _ in range(8)] + [sample(1, 1) for _ in range(8)]
    plan = plan_step(samples, 2, 1, pack_length=32)
    load = [sum(lengths(micro) for micro in rank.micro_batches[0]) for rank in plan]
    assert max(load) - min(load) <= 16, load


@pytest.mark.parametrize("packed_rows", [False, True])
def test_micro_batch_tensors_never_exceed_the_pack_length(packed_rows):
    """Failed before: bins were limited by real tokens but padded to batch x longest sequence, so a bin of
    one long and several short samples held several times pack_length tokens (and logits)."""
    samples = [sample(50, 150)] + [sample(5, 5) for _ in range(20)]
    for rank in plan_step(samples, 2, 1, pack_length=400, packed_rows=packed_rows):
        for micro in rank.micro_batches[0]:
            assert collate(micro, 0, "cpu", packed_rows)["input_ids"].numel() <= 400


@pytest.fixture(scope="module")
def tiny_model(tiny_judge_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        tiny_judge_dir, dtype=torch.float32, attn_implementation="sdpa"
    )


def alone(model, s: Sample) -> torch.Tensor:
    ids = torch.tensor([s.query_ids + s.response_ids])
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)


def test_packed_and_padded_log_probs_equal_each_sample_alone(tiny_model):
    """Packed rows: the block-diagonal mask built from the restarting position ids keeps samples apart.
    Padded rows: the attention mask hides the padding. Either way each sample's log-probs equal those of
    the sample run alone."""
    g = torch.Generator().manual_seed(0)
    samples = [
        Sample(
            torch.randint(3, 600, (3 + i,), generator=g).tolist(),
            torch.randint(3, 600, (2 + 2 * i,), generator=g).tolist(),
            [0.0] * (2 + 2 * i),
            0.0,
        )
        for i in range(4)
    ]
    b = collate(samples, 0, "cpu", packed_rows=True)
    with torch.no_grad():
        packed = token_logprobs(tiny_model, b)[0]
        one_sequence = token_logprobs(
            tiny_model, {**b, "position_ids": torch.arange(b["input_ids"].shape[1])[None]}
        )[0]
        padded = token_logprobs(tiny_model, collate(samples, 0, "cpu"))
    offset = 0
    for i, s in enumerate(samples):
        torch.testing.assert_close(
            packed[offset : offset + s.length - 1], alone(tiny_model, s), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(padded[i, : s.length - 1], alone(tiny_model, s), atol=1e-5, rtol=0)
        offset += s.length
    # without the restarting positions the later samples would see the earlier ones
    assert (one_sequence - packed).abs().max() > 1e-3


def test_log_probs_are_of_the_tempered_distribution(tiny_model):
    """Failed before: the learner scored tokens under the untempered policy while vLLM sampled (and reported
    logprobs) at the rollout temperature, so at T != 1 the importance ratio compared two distributions."""
    s = sample(4, 6)
    b = collate([s], 0, "cpu")
    with torch.no_grad():
        got = token_logprobs(tiny_model, b, temperature=0.5)[0]
        ids = b["input_ids"]
        expected = torch.log_softmax(tiny_model(input_ids=ids).logits[0, :-1].float() / 0.5, -1)
    torch.testing.assert_close(got, expected.gather(-1, ids[0, 1:, None]).squeeze(-1), atol=1e-5, rtol=0)
    assert (got - token_logprobs(tiny_model, b)[0].detach()).abs().max() > 1e-2


def test_float32_log_softmax_is_taken_a_bounded_chunk_at_a_time(tiny_model, monkeypatch):
    """Same log-probs and gradients as one full float32 pass, while no float32 logits larger than
    LOGIT_CHUNK_ELEMENTS exist at once (forward, or recomputed in backward)."""
    from open_instruct import packing

    g = torch.Generator().manual_seed(1)
    samples = [
        Sample(
            torch.randint(3, 600, (9,), generator=g).tolist(),
            torch.randint(3, 600, (30,), generator=g).tolist(),
            [0.0] * 30,
            0.0,
        )
        for _ in range(3)
    ]
    b = collate(samples, 0, "cpu")

    def run():
        tiny_model.zero_grad()
        lp = token_logprobs(tiny_model, b)
        (lp * b["mask"]).sum().backward()
        return lp.detach(), tiny_model.model.embed_tokens.weight.grad.clone()

    full_lp, full_grad = run()
    seen = []
    original = packing._chunk_logprobs

    def spy(logits, targets, temperature):
        seen.append(logits.numel())
        return original(logits, targets, temperature)

    monkeypatch.setattr(packing, "_chunk_logprobs", spy)
    monkeypatch.setattr(packing, "LOGIT_CHUNK_ELEMENTS", 10 * tiny_model.config.vocab_size)
    chunked_lp, chunked_grad = run()
    assert len(seen) >= 2 * 12 and max(seen) <= 10 * tiny_model.config.vocab_size  # 12 chunks, each run twice
    torch.testing.assert_close(chunked_lp, full_lp, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked_grad, full_grad, atol=1e-6, rtol=1e-5)
