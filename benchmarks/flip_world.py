"""FLIP in the small world (open_instruct/testing/world.py): does the reward carry a learning signal?

Through every real part (`scripts/train/grpo_flip.sh` on the tiny preset: the world's judge served by vLLM,
litellm, a vLLM engine, a DeepSpeed learner, Ray), for each seed: the mean FLIP reward over the first and the
last 3 steps, the share of unparsed judge answers, and the policy's on-task rate on the eval prompts before
and after (judged by the world's own reading of a response, not by any judge). The LLM-judge baseline
(`grpo_llmjudge.sh`, pointwise 1-10 ratings from the same tiny judge) runs on the same seeds for the same
steps: its on-task rate is the comparison that does not depend on whose reward it is.

Then, with the world's judge served once: `flip_eval` on data/flip_world/rewardbench.jsonl (all four
methods) and `flip bon` on data/flip_world/bon.jsonl (how often best-of-4 by FLIP picks the on-task one).
Wall times of the build and of every run are reported. Results: benchmarks/results/flip_world.json.

    python benchmarks/flip_world.py [--seeds 0 1 2] [--baseline_seeds 0 1 2] [--skip_eval]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from open_instruct.net_utils import free_port
from open_instruct.testing import world

REPO = Path(__file__).resolve().parent.parent
WORLD = REPO / ".cache" / "flip-world"
PY = sys.executable


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def on_task(rows: list[dict]) -> float:
    return world.on_task_rate((r["messages"][-1]["content"], r["response"]) for r in rows)


def train(script: str, seed: int, out: Path) -> dict:
    """One run of a launch script on the tiny preset; its reward curve and on-task rates."""
    env = {**os.environ, "PRESET": "tiny", "SEED": str(seed), "OUTPUT_DIR": str(out), "PYTHON": PY}
    start = time.time()
    proc = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"{script} seed {seed} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    metrics = read_jsonl(out / "metrics.jsonl")
    rewards = [m["reward_mean"] for m in metrics]
    evals = sorted((out / "eval").glob("step_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
    answers = sum(m["judge_answers"] for m in metrics)
    return {
        "seed": seed,
        "steps": len(metrics),
        "reward_first3": statistics.fmean(rewards[:3]),
        "reward_last3": statistics.fmean(rewards[-3:]),
        "reward_rise": statistics.fmean(rewards[-3:]) - statistics.fmean(rewards[:3]),
        "unparsed_share": sum(m["unparsed"] for m in metrics) / max(answers, 1),
        "judge_failures": sum(m["judge_failures"] for m in metrics),
        "on_task_before": on_task(read_jsonl(evals[0])),
        "on_task_after": on_task(read_jsonl(evals[-1])),
        "eval_steps": [int(p.stem.split("_")[1]) for p in (evals[0], evals[-1])],
        "seconds": round(seconds, 1),
    }


def serve_judge(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SERVED_MODEL_NAME": "world-judge", "MAX_MODEL_LEN": "2048", "JUDGE_LOG": str(log)}
    proc = subprocess.Popen(
        ["bash", "scripts/serve_judge.sh", str(WORLD / "judge"), str(port), "--", "--enforce-eager"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if "judge ready" in line:
            return proc, f"http://127.0.0.1:{port}/v1"
    raise SystemExit(f"the judge server did not start; see {log}")


def evaluate(out: Path) -> dict:
    proc, api_base = serve_judge(out / "judge_server.log")
    judge = ["--llm_judge_model", "hosted_vllm/world-judge", "--llm_judge_api_base", api_base]
    judge += ["--llm_judge_max_tokens", "64", "--llm_judge_max_context_length", "2048"]
    try:
        start = time.time()
        subprocess.run(
            [PY, "-m", "open_instruct.flip_eval", "--dataset", "data/flip_world/rewardbench.jsonl"]
            + ["--output-dir", str(out / "rewardbench"), "--no-progress", *judge],
            cwd=REPO,
            check=False,
        )
        rb = json.loads((out / "rewardbench" / "results.json").read_text())
        subprocess.run(
            [PY, "-m", "open_instruct.flip", "bon", "--input", "data/flip_world/bon.jsonl"]
            + ["--output", str(out / "bon.jsonl"), "--method", "flip", "--no-progress", *judge],
            cwd=REPO,
            check=False,
        )
        bon = read_jsonl(out / "bon.jsonl")
        picks = [r["flip"]["best_index"] == r["on_task_index"] for r in bon]
        return {
            "rewardbench": {
                r["method"]: {"official": r["official"], "accuracy": r["accuracy"], "unparsed": r["unparsed"]}
                for r in rb
            },
            "bon_on_task_pick_rate": sum(picks) / len(picks),
            "bon_rows": len(picks),
            "seconds": round(time.time() - start, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of the FLIP runs")
    p.add_argument(
        "--baseline_seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the LLM-judge runs"
    )
    p.add_argument("--skip_eval", action="store_true", help="leave out flip_eval and flip bon")
    p.add_argument("--output_dir", default="output/bench_flip_world")
    args = p.parse_args()
    out = REPO / args.output_dir
    out.mkdir(parents=True, exist_ok=True)

    # Built once and cached (report.json keeps the build's own wall time).
    subprocess.run([PY, "-m", "open_instruct.testing.world_models", "--output_dir", str(WORLD)], check=True)
    report = json.loads((WORLD / "report.json").read_text())
    result = {"world": {k: v for k, v in report.items() if k != "examples"}}

    result["flip"] = [train("scripts/train/grpo_flip.sh", s, out / f"flip_seed{s}") for s in args.seeds]
    result["llmjudge"] = [
        train("scripts/train/grpo_llmjudge.sh", s, out / f"llmjudge_seed{s}") for s in args.baseline_seeds
    ]
    if not args.skip_eval:
        result["eval"] = evaluate(out)

    results_dir = REPO / "benchmarks" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "flip_world.json").write_text(json.dumps(result, indent=2) + "\n")

    w = result["world"]
    print(
        f"\nworld judge: parse rate {w['parse_rate']:.2f}, F1 {w['f1_true']:.3f} against the true instruction, "
        f"{w['f1_mismatched']:.3f} against another row's (built in {w['build_seconds']:.0f} s)"
    )
    print(
        f"{'run':<16} {'reward first3':>13} {'last3':>7} {'rise':>7} {'unparsed':>9} {'on-task':>15} {'wall s':>7}"
    )
    for name in ("flip", "llmjudge"):
        for r in result[name]:
            print(
                f"{name + ' seed ' + str(r['seed']):<16} {r['reward_first3']:>13.3f} {r['reward_last3']:>7.3f} "
                f"{r['reward_rise']:>+7.3f} {r['unparsed_share']:>9.1%} "
                f"{r['on_task_before']:>6.1%} -> {r['on_task_after']:<6.1%} {r['seconds']:>7.0f}"
            )
    rises = [r["reward_rise"] for r in result["flip"]]
    if len(rises) > 1:
        print(
            f"FLIP reward rise: mean {statistics.fmean(rises):+.3f}, min {min(rises):+.3f}, sd {statistics.stdev(rises):.3f}"
        )
    if "eval" in result:
        e = result["eval"]
        for method, r in e["rewardbench"].items():
            subsets = ", ".join(
                f"{k} {v:.1%}" for k, v in r["official"].items() if k != "overall" and v is not None
            )
            print(f"rewardbench (world) {method:<9} RB2 score {r['official']['overall']:.1%} ({subsets})")
        print(
            f"flip bon: the on-task response picked in {e['bon_on_task_pick_rate']:.1%} of {e['bon_rows']} rows"
        )
    print(f"results: {results_dir / 'flip_world.json'}")


if __name__ == "__main__":
    main()
