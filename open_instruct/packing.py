"""A training step as micro-batches: what the controller plans and each learner turns into tensors.

`plan_step` packs the whole step at once and deals the micro-batches out so that every learner runs the same
number (the collectives of ZeRO-2/3 need every rank in every pass); each micro-batch fills at most
`pack_length` tokens of its tensor, padding included. `collate` lays a micro-batch out as right-padded rows
(SDPA, eager attention) or as one packed row whose position ids restart at each sample (flash-attention's
variable-length kernels); `token_logprobs` scores it, float32 a bounded chunk at a time.
"""

import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint


@dataclass
class Sample:
    query_ids: list[int]
    response_ids: list[int]
    vllm_logprobs: list[float]
    advantage: float

    @property
    def length(self) -> int:
        return len(self.query_ids) + len(self.response_ids)


@dataclass
class RankBatch:
    """One rank's share of a training step. `micro_batches[m]` lists the micro-batches of mini-batch m; every
    rank gets the same number, and an empty one is padding. `num_tokens[m]` is mini-batch m's response-token
    count over all ranks divided by the number of ranks: DeepSpeed averages gradients over ranks, so dividing
    each rank's token sum by it makes the update the token-level mean over the whole mini-batch.
    `packed_rows`: how a micro-batch becomes tensors (see `collate`)."""

    micro_batches: list[list[list[Sample]]]
    num_tokens: list[float]
    packed_rows: bool = False


def pack(samples: list[Sample], pack_length: int, packed_rows: bool = False) -> list[list[Sample]]:
    """Greedy first-fit, longest first, into bins that fill at most `pack_length` tokens of the micro-batch
    tensor: with `packed_rows` the samples' own tokens (one row, no padding); without, samples x the longest
    sample (right-padded rows). Sorted longest first, a bin's longest sample is its first one. A sample
    longer than `pack_length` gets a bin of its own."""
    bins: list[list[Sample]] = []
    used: list[int] = []  # tensor tokens each bin fills
    for s in sorted(samples, key=lambda s: -s.length):
        for i, b in enumerate(bins):
            grown = used[i] + s.length if packed_rows else (len(b) + 1) * b[0].length
            if grown <= pack_length:
                b.append(s)
                used[i] = grown
                break
        else:
            bins.append([s])
            used.append(s.length)
    return bins


def plan_step(
    samples: list[Sample], world_size: int, num_mini_batches: int, pack_length: int, packed_rows: bool = False
) -> list[RankBatch]:
    """Pack the whole step at once and deal the micro-batches out so that every rank runs the same number.

    Under ZeRO-2/3 every forward and backward pass has collectives, so a rank that ran one micro-batch
    fewer than its peers would leave them waiting in one until the backend timeout. Per mini-batch, the
    micro-batches go largest first to the rank with the fewest tokens among those still below their share
    (ceil(micro-batches / ranks)); a rank left short is padded with empty micro-batches, which run a pass
    with no token in the loss."""
    out = [RankBatch([], [], packed_rows) for _ in range(world_size)]
    for minibatch in (samples[i::num_mini_batches] for i in range(num_mini_batches)):
        bins = sorted(pack(minibatch, pack_length, packed_rows), key=lambda b: -sum(s.length for s in b))
        share = max(1, math.ceil(len(bins) / world_size))
        ranks: list[list[list[Sample]]] = [[] for _ in range(world_size)]
        load = [0] * world_size
        for b in bins:
            r = min((r for r in range(world_size) if len(ranks[r]) < share), key=lambda r: load[r])
            ranks[r].append(b)
            load[r] += sum(s.length for s in b)
        tokens = sum(len(s.response_ids) for s in minibatch) / world_size
        for r in range(world_size):
            out[r].micro_batches.append(ranks[r] + [[] for _ in range(share - len(ranks[r]))])
            out[r].num_tokens.append(tokens)
    return out


def collate(samples: list[Sample], pad_id: int, device, packed_rows: bool = False) -> dict:
    """A micro-batch as tensors. Per-token tensors are aligned with position t predicting token t + 1:
    `mask` marks positions whose next token is a response token of the same sample, and `advantages` and
    `vllm_logprobs` are given per position.

    packed_rows=False: [B, L], right-padded to the longest sample, with an attention mask (pack() keeps
        B x L within pack_length). Exact with any attention implementation, and no attention is spent across
        samples: what SDPA and eager attention want.
    packed_rows=True: [1, L], the samples back to back without padding, with position ids that restart at 0
        for each sample; transformers turns those into variable-length attention (flash-attention) or a
        block-diagonal mask, so each sample attends to itself only.
    An empty list gives one row of two padding tokens with nothing in the loss (a padding micro-batch still
    runs the passes whose collectives the other ranks wait on)."""
    empty = not samples
    if empty:
        samples = [Sample([pad_id], [pad_id], [0.0], 0.0)]
    rows = []
    for s in samples:
        q, r = len(s.query_ids), len(s.response_ids)
        lps = list(s.vllm_logprobs[:r]) + [0.0] * (r - len(s.vllm_logprobs[:r]))
        # position q - 1 .. q + r - 2 predict the response; the last one predicts the next sample's first token
        rows.append(
            (
                s.query_ids + s.response_ids,
                [0.0] * (q - 1) + [0.0 if empty else 1.0] * r + [0.0],
                [0.0] * (q - 1) + lps + [0.0],
                [s.advantage] * (q + r),
            )
        )
    if packed_rows:
        rows = [tuple(sum((row[k] for row in rows), []) for k in range(4))]
        positions = [p for s in samples for p in range(s.length)]
    length = max(len(ids) for ids, *_ in rows)
    B = len(rows)
    out = {"input_ids": torch.full((B, length), pad_id, dtype=torch.long)}
    for name in ("mask", "vllm_logprobs", "advantages"):
        out[name] = torch.zeros((B, length - 1), dtype=torch.float32)
    attention = torch.zeros((B, length), dtype=torch.long)
    for b, (ids, mask, lps, adv) in enumerate(rows):
        n = len(ids)
        out["input_ids"][b, :n] = torch.tensor(ids)
        attention[b, :n] = 1
        out["mask"][b, : n - 1] = torch.tensor(mask[: n - 1])
        out["vllm_logprobs"][b, : n - 1] = torch.tensor(lps[: n - 1])
        out["advantages"][b, : n - 1] = torch.tensor(adv[: n - 1])
    if packed_rows:
        out["position_ids"], out["attention_mask"] = torch.tensor([positions]), None
    else:
        out["position_ids"], out["attention_mask"] = None, attention
    return {k: v.to(device) if v is not None else None for k, v in out.items()}


LOGIT_CHUNK_ELEMENTS = 2**26  # float32 logits held at once while computing log-probs: 256 MiB


def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logits = logits.float() / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """log p(token t+1 | tokens <= t of its sample) for every position of a collated micro-batch, [B, L-1],
    float32, where p is the policy's distribution at the sampling temperature (softmax of logits /
    temperature): the distribution vLLM sampled from and reports logprobs of, so the importance ratios
    compare like with like.

    The model's logits stay in its own dtype (bf16 on GPU); the float32 log-softmax is taken a chunk of
    positions at a time (LOGIT_CHUNK_ELEMENTS) and recomputed in the backward pass instead of kept, so a
    float32 copy of the [B x L, vocab] logits never exists (at the paper's 18k tokens and a 150k vocabulary
    that copy alone would be 11 GB)."""
    input_ids = batch["input_ids"]
    logits = model(
        input_ids=input_ids,
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    ).logits[:, :-1]
    shape = logits.shape[:2]
    logits, targets = logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1)
    step = max(1, LOGIT_CHUNK_ELEMENTS // logits.shape[-1])
    parts = []
    for start in range(0, logits.shape[0], step):
        chunk = (logits[start : start + step], targets[start : start + step], temperature)
        if torch.is_grad_enabled() and logits.requires_grad:
            parts.append(torch.utils.checkpoint.checkpoint(_chunk_logprobs, *chunk, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(*chunk))
    return torch.cat(parts).reshape(shape)
