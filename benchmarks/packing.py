"""Micro-batches of one GRPO step at the published recipe's lengths: per-rank padded bins vs the global plan.

No model runs: the step's samples are drawn at random with the paper's shapes (24 prompts x 8 samples,
prompts of up to 2048 tokens, responses of up to 16384 with a share hitting the limit, 8 learners,
pack_length 18432, a 100k vocabulary as Olmo 3's), and both ways of cutting them into micro-batches are
counted side by side:

  per-rank  each learner packs its own shard (samples r::8) into bins of at most pack_length real tokens,
            and a bin is padded to (samples in it) x (its longest sample), as before packing.plan_step
  padded    packing.plan_step with padded rows (SDPA or eager attention): the whole step packed at once
            into bins of at most pack_length tokens padding included, dealt out so every learner runs the
            same number of micro-batches
  packed    packing.plan_step with packed rows (flash-attention): the same, one row without padding each

Printed per way: the spread of micro-batches per learner (a difference is a hang under ZeRO: every pass has
collectives), the largest micro-batch in tokens (padding included), and the largest float32 logits a
micro-batch materialises: [tokens, vocab] (plus as much again for its log-softmax) per-rank, one
packing.LOGIT_CHUNK_ELEMENTS chunk globally (the bf16 logits, 2 bytes a token and vocab entry, are there
either way). Ratios are per-rank / global.

    python benchmarks/packing.py [--seeds 5] [--vocab 100278] [--truncated 0.2]
"""

import argparse
import random
import statistics

from open_instruct.packing import LOGIT_CHUNK_ELEMENTS, Sample, pack, plan_step

GiB = 1024**3


def draw_step(
    rng: random.Random, prompts: int, samples: int, max_prompt: int, max_response: int, truncated: float
):
    out = []
    for _ in range(prompts):
        q = rng.randint(32, max_prompt)
        for _ in range(samples):
            r = max_response if rng.random() < truncated else rng.randint(64, max_response)
            out.append(Sample([0] * q, [0] * r, [], 0.0))
    return out


def per_rank(samples: list[Sample], world: int, pack_length: int) -> tuple[list[int], int]:
    """(micro-batches per learner, largest padded micro-batch in tokens) with per-shard packing."""
    counts, largest = [], 0
    for r in range(world):
        bins = pack(samples[r::world], pack_length, packed_rows=True)  # bins by real tokens, then padded
        counts.append(len(bins))
        largest = max([largest] + [len(b) * max(s.length for s in b) for b in bins])
    return counts, largest


def global_plan(
    samples: list[Sample], world: int, pack_length: int, packed_rows: bool
) -> tuple[list[int], int]:
    plan = plan_step(samples, world, 1, pack_length, packed_rows)
    counts = [len(rank.micro_batches[0]) for rank in plan]
    size = (
        (lambda m: sum(s.length for s in m)) if packed_rows else (lambda m: len(m) * max(s.length for s in m))
    )
    largest = max(size(micro) for rank in plan for micro in rank.micro_batches[0] if micro)
    return counts, largest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--vocab", type=int, default=100278, help="Olmo 3's vocabulary")
    p.add_argument(
        "--truncated", type=float, default=0.2, help="share of responses that hit the length limit"
    )
    a = p.parse_args()
    world, pack_length, max_prompt, max_response = 8, 18432, 2048, 16384
    rows = []
    for seed in range(a.seeds):
        samples = draw_step(random.Random(seed), 24, 8, max_prompt, max_response, a.truncated)
        ways = {
            "per-rank": per_rank(samples, world, pack_length),
            "padded": global_plan(samples, world, pack_length, False),
            "packed": global_plan(samples, world, pack_length, True),
        }
        rows.append(ways)
        print(
            f"seed {seed}: "
            + "; ".join(
                f"{name} {min(c)}-{max(c)} micro-batches per learner, largest {big} tokens"
                for name, (c, big) in ways.items()
            )
        )

    def fp32(tokens: int, chunked: bool) -> float:  # float32 logits and their log-softmax
        return 2 * (min(LOGIT_CHUNK_ELEMENTS, tokens * a.vocab) if chunked else tokens * a.vocab) * 4

    print(
        f"\n{a.seeds} steps of 24 x 8 samples on {world} learners, pack_length {pack_length}, vocab {a.vocab}:"
    )
    for name in ("per-rank", "padded", "packed"):
        unequal = sum(max(r[name][0]) != min(r[name][0]) for r in rows)
        count = statistics.median(statistics.mean(r[name][0]) for r in rows)
        big = max(r[name][1] for r in rows)
        print(
            f"  {name:8s}  learners with different numbers of micro-batches in {unequal}/{a.seeds} steps; "
            f"{count:.1f} micro-batches per learner (median); largest micro-batch {big / pack_length:.2f}x "
            f"pack_length; largest float32 logits {fp32(big, name != 'per-rank') / GiB:.2f} GiB"
        )
    old, new = max(r["per-rank"][1] for r in rows), max(r["padded"][1] for r in rows)
    print(
        f"  ratios per-rank / padded: largest micro-batch {old / new:.2f}x, float32 logits "
        f"{fp32(old, False) / fp32(new, True):.0f}x"
    )


if __name__ == "__main__":
    main()
