"""Judge-stage throughput: FLIP rewards through the real client against a loopback judge.

The scripted judge serves 32 requests at once with 0.25 s latency each, so 192 rewards can take no
less than ceil(192 / 32) * 0.25 s = 1.5 s. Printed: wall time over that ideal (target: at most 1.15),
measured after one warm-up pass so litellm's first-call set-up is not counted.

    python benchmarks/judge_stage.py [--rewards 192] [--server-concurrency 32] [--latency 0.25]
"""

import argparse
import asyncio
import json
import math
import time

from open_instruct.ground_truth_utils import build_verifier
from open_instruct.judge_client import JudgeClient, JudgeConfig
from open_instruct.testing.scripted_judge import Reply, response_of, scripted_judge_process


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rewards", type=int, default=192)
    p.add_argument("--server-concurrency", type=int, default=32)
    p.add_argument("--latency", type=float, default=0.25)
    p.add_argument(
        "--client-concurrency",
        type=int,
        default=JudgeConfig.max_concurrency,
        help="the client's in-flight cap (default: JudgeConfig's default, as users run it)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best and the median are shown")
    args = p.parse_args()

    def handler(messages, n):
        inferred = "Write about " + response_of(messages)
        return Reply(json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": inferred}), delay=args.latency)

    rows = [(f"Write about topic {i}.", f"topic {i}") for i in range(args.rewards)]
    ideal = math.ceil(args.rewards / args.server_concurrency) * args.latency
    # The judge runs in its own process, as a real server would, so it does not share our interpreter.
    with scripted_judge_process(handler, max_concurrency=args.server_concurrency) as api_base:
        client = JudgeClient(
            JudgeConfig(
                "hosted_vllm/scripted", api_base=api_base, retries=0, max_concurrency=args.client_concurrency
            )
        )
        verifier = build_verifier("general-flip", client)

        async def one_pass() -> float:
            start = time.perf_counter()
            results = await asyncio.gather(*(verifier.async_call(None, r, gt) for gt, r in rows))
            elapsed = time.perf_counter() - start
            assert all(r.judge_ok and r.score == 1.0 for r in results), "benchmark rewards are wrong"
            return elapsed

        async def run() -> list[float]:
            await one_pass()  # warm-up: imports, connection pool, litellm caches
            return [await one_pass() for _ in range(args.repeats)]

        times = asyncio.run(run())
    best, median = min(times), sorted(times)[len(times) // 2]
    print(
        f"judge stage: {args.rewards} FLIP rewards, server {args.server_concurrency} at once, "
        f"client {args.client_concurrency} in flight, "
        f"{args.latency}s latency; ideal {ideal:.2f}s"
    )
    print(f"  wall best {best:.3f}s  median {median:.3f}s  (passes: {', '.join(f'{t:.3f}' for t in times)})")
    print(f"  ratio wall/ideal: best {best / ideal:.3f}  median {median / ideal:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
