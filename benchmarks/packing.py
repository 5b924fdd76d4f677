"""Micro-batches of one GRPO step at the published recipe's lengths: per-rank padded bins vs the global plan.

No model runs: the step's samples are drawn at random with the paper's shapes (24 prompts x 8 samples,
prompts of up to 2048 tokens, responses of up to 16384 with a share hitting the limit, 8 learners,
pack_length 18432, a 100k vocabulary as Olmo 3's), and both ways of cutting them into micro-batches are
counted side by side:

  per-rank  each learner packs its own shard (samples r::8) into bins of at most pack_length real tokens,
            and a bin is padded to (samples in it) x (its longest sample), as before learner.plan_step
  global    learner.plan_step: the whole step packed at once into rows of at most pack_length tokens, no
            padding, dealt out so every learner runs the same number of micro-batches

Printed per way: the spread of micro-batches per learner (a difference is a hang under ZeRO: every pass has
collectives), the largest micro-batch in tokens (padding included), and the largest float32 logits a
micro-batch materialises: [tokens, vocab] (plus as much again for its log-softmax) per-rank, one
learner.LOGIT_CHUNK_ELEMENTS chunk globally (the bf16 logits, 2 bytes a token and vocab entry, are there
either way). Ratios are per-rank / global.

    python benchmarks/packing.py [--seeds 5] [--vocab 100278] [--truncated 0.2]
"""

import argparse
import random
import statistics

from open_instruct.learner import LOGIT_CHUNK_ELEMENTS, Sample, pack, plan_step

GiB = 1024**3


def draw_step(rng: random.Random, prompts: int, samples: int, max_prompt: int, max_response: int, truncated: float):
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
        bins = pack(samples[r::world], pack_length)
        counts.append(len(bins))
        largest = max([largest] + [len(b) * max(s.length for s in b) for b in bins])
    return counts, largest


def global_plan(samples: list[Sample], world: int, pack_length: int) -> tuple[list[int], int]:
    plan = plan_step(samples, world, 1, pack_length)
    counts = [len(rank.micro_batches[0]) for rank in plan]
    largest = max(sum(s.length for s in micro) for rank in plan for micro in rank.micro_batches[0])
    return counts, largest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--vocab", type=int, default=100278, help="Olmo 3's vocabulary")
    p.add_argument("--truncated", type=float, default=0.2, help="share of responses that hit the length limit")
    a = p.parse_args()
    world, pack_length, max_prompt, max_response = 8, 18432, 2048, 16384
    rows = []
    for seed in range(a.seeds):
        samples = draw_step(random.Random(seed), 24, 8, max_prompt, max_response, a.truncated)
        old_counts, old_largest = per_rank(samples, world, pack_length)
        new_counts, new_largest = global_plan(samples, world, pack_length)
        old_fp32 = 2 * old_largest * a.vocab * 4  # logits.float() and its log-softmax
        new_fp32 = 2 * min(LOGIT_CHUNK_ELEMENTS, new_largest * a.vocab) * 4
        rows.append((old_counts, new_counts, old_largest, new_largest, old_fp32, new_fp32))
        print(f"seed {seed}: micro-batches per learner {min(old_counts)}-{max(old_counts)} per-rank, "
              f"{min(new_counts)}-{max(new_counts)} global; largest micro-batch {old_largest} vs {new_largest} tokens "
              f"({old_largest / new_largest:.2f}x); float32 logits {old_fp32 / GiB:.1f} vs {new_fp32 / GiB:.2f} GiB")  # fmt: skip
    unequal = sum(max(r[0]) != min(r[0]) for r in rows)
    print(f"\n{a.seeds} steps of 24 x 8 samples on {world} learners, pack_length {pack_length}, vocab {a.vocab}:")
    print(f"  steps where learners would run different numbers of micro-batches: per-rank {unequal}/{a.seeds}, "
          f"global {sum(max(r[1]) != min(r[1]) for r in rows)}/{a.seeds}")
    print(f"  largest micro-batch (tokens, padding included): per-rank / global = "
          f"{statistics.median(r[2] / r[3] for r in rows):.2f}x median, per-rank up to "
          f"{max(r[2] for r in rows) / pack_length:.2f}x pack_length, global up to {max(r[3] for r in rows) / pack_length:.2f}x")
    print(f"  largest float32 logits: per-rank / global = {statistics.median(r[4] / r[5] for r in rows):.0f}x median "
          f"({max(r[4] for r in rows) / GiB:.0f} GiB vs {max(r[5] for r in rows) / GiB:.2f} GiB)")


if __name__ == "__main__":
    main()
