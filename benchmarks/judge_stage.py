"""Judge-stage throughput: FLIP rewards through the real client against scripted judges on loopback.

Each scripted judge runs in its own process and serves 32 requests at once with 0.25 s latency, so 192
rewards over R replicas take no less than ceil(192 / (32 R)) * 0.25 s. Printed, in one run:
- for R in --replicas: wall time over that ideal (target: at most 1.15), after one warm-up pass;
- with the largest R and one replica killed when half the ideal time has passed: whether every reward
  still arrived, and the wall time;
- the client's own cost: rewards/s against one judge with no latency (target: at least 500 on 2 cores),
  through the direct HTTP path `hosted_vllm/` judges take, and through litellm (`openai/` on the same
  server) beside it.
Every pass scores rows it has not scored before, so no answer comes from the client's memory of identical
prompts. Results: benchmarks/results/judge_stage.json.

    python benchmarks/judge_stage.py [--rewards 192] [--replicas 1 2 4] [--latency 0.25]
"""

import argparse
import asyncio
import json
import math
import statistics
import time
from pathlib import Path

from open_instruct.ground_truth_utils import build_verifier
from open_instruct.judge_client import JudgeClient, JudgeConfig
from open_instruct.testing.scripted_judge import Reply, ScriptedJudgeProcess, response_of

RESULTS = Path(__file__).resolve().parent / "results" / "judge_stage.json"


def handler_with(latency: float):
    def handler(messages, n):
        inferred = "Write about " + response_of(messages)
        return Reply(json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": inferred}), delay=latency)

    return handler


class Stage:
    """The reward stage as the trainer runs it: the general-flip verifier over one JudgeClient."""

    def __init__(self, model: str, bases: list[str], **settings):
        self.client = JudgeClient(JudgeConfig(model, api_base=",".join(bases), **settings))
        self.verifier = build_verifier("general-flip", self.client)
        self.passes = 0

    async def score(self, n: int, during=None) -> float:
        """Seconds to score n fresh rows (all must score 1.0); `during` runs alongside."""
        self.passes += 1
        rows = [(f"Write about topic {self.passes}-{i}.", f"topic {self.passes}-{i}") for i in range(n)]
        start = time.perf_counter()
        side = asyncio.ensure_future(during()) if during else None
        results = await asyncio.gather(*(self.verifier.async_call(None, r, gt) for gt, r in rows))
        elapsed = time.perf_counter() - start
        if side:
            await side
        lost = sum(not r.judge_ok for r in results)
        wrong = sum(r.judge_ok and r.score != 1.0 for r in results)
        assert not lost and not wrong, f"{lost} rewards lost, {wrong} wrong"
        return elapsed


def replica_runs(args) -> list[dict]:
    rows = []
    for replicas in args.replicas:
        judges = [
            ScriptedJudgeProcess(handler_with(args.latency), args.server_concurrency) for _ in range(replicas)
        ]
        try:
            stage = Stage("hosted_vllm/scripted", [j.api_base for j in judges], retries=0)
            ideal = math.ceil(args.rewards / (args.server_concurrency * replicas)) * args.latency

            async def run(stage=stage):
                await stage.score(args.rewards)  # warm-up: connections, imports
                return [await stage.score(args.rewards) for _ in range(args.repeats)]

            times = asyncio.run(run())
        finally:
            for j in judges:
                j.kill()
        best, median = min(times), statistics.median(times)
        rows.append(
            dict(replicas=replicas, ideal_s=ideal, best_s=best, median_s=median, ratio_best=best / ideal,
                 ratio_median=median / ideal, passes=times)
        )  # fmt: skip
        print(
            f"  {replicas} replica(s): ideal {ideal:.2f}s, wall best {best:.3f}s median {median:.3f}s, "
            f"ratio best {best / ideal:.3f} median {median / ideal:.3f}  (target <= 1.15)"
        )
    return rows


def failover_run(args) -> dict:
    replicas = max(args.replicas)
    judges = [
        ScriptedJudgeProcess(handler_with(args.latency), args.server_concurrency) for _ in range(replicas)
    ]
    try:
        stage = Stage("hosted_vllm/scripted", [j.api_base for j in judges])
        ideal = math.ceil(args.rewards / (args.server_concurrency * replicas)) * args.latency

        async def kill_one():
            await asyncio.sleep(ideal / 2)
            judges[0].kill()

        async def run():
            await stage.score(args.rewards)
            return await stage.score(args.rewards, during=kill_one)

        seconds = asyncio.run(run())
    finally:
        for j in judges:
            j.kill()
    s = stage.client.stats
    print(
        f"  {replicas} replicas, one killed after {ideal / 2:.2f}s: all {args.rewards} rewards arrived in "
        f"{seconds:.3f}s ({s.failovers} requests failed over, {s.failures} failed)"
    )
    return dict(replicas=replicas, killed_after_s=ideal / 2, seconds=seconds, all_arrived=True,
                failovers=s.failovers, failures=s.failures)  # fmt: skip


def zero_latency_runs(args) -> dict:
    out = {}
    with ScriptedJudgeProcess(handler_with(0.0), args.server_concurrency) as judge:
        for path, model in (("direct", "hosted_vllm/scripted"), ("litellm", "openai/scripted")):
            stage = Stage(model, [judge.api_base], retries=0, api_key="EMPTY")

            async def run(stage=stage):
                await stage.score(args.fast_rewards)
                return [await stage.score(args.fast_rewards) for _ in range(args.repeats)]

            best = min(asyncio.run(run()))
            out[path] = args.fast_rewards / best
            print(
                f"  {path:8s} {args.fast_rewards} rewards, no latency: {out[path]:.0f} rewards/s ({best:.3f}s)"
            )
    print(f"  direct / litellm: {out['direct'] / out['litellm']:.2f}x  (target: direct >= 500 rewards/s)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rewards", type=int, default=192)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--server-concurrency", type=int, default=32)
    p.add_argument("--latency", type=float, default=0.25)
    p.add_argument("--fast-rewards", type=int, default=384, help="rewards per pass at zero latency")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best and the median are shown")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    print(
        f"judge stage: {args.rewards} FLIP rewards, each replica serving {args.server_concurrency} at once "
        f"with {args.latency}s latency; client at its defaults (64 in flight per replica)"
    )
    result = dict(
        settings=dict(rewards=args.rewards, server_concurrency=args.server_concurrency, latency=args.latency),
        replicas=replica_runs(args),
        failover=failover_run(args),
        zero_latency_rewards_per_s=zero_latency_runs(args),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
