"""FLIP carries a learning signal in the small world (open_instruct/testing/world.py), through every real part:
the world's tiny judge trained offline and served by vLLM, litellm, a vLLM engine, a DeepSpeed learner, Ray.

The world is built once into .cache/flip-world, where the tiny preset (and `make demo`) expects it; the build
is cached across runs like the tiny models."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.testing import world

REPO = Path(__file__).resolve().parents[2]

# The FLIP reward's rise over a demo run (mean of the last 3 steps minus the first 3). benchmarks/flip_world.py
# measured it on 3 seeds (benchmarks/results/flip_world.json); the margin sits below the smallest of them.
MIN_REWARD_RISE = 0.1


@pytest.fixture
def world_dir(flip_world) -> Path:
    return flip_world


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_world_judge_infers_held_out_instructions(world_dir):
    report = json.loads((world_dir / "report.json").read_text())
    assert report["parse_rate"] >= 0.95, report
    assert report["f1_true"] >= 0.6, report
    assert report["f1_mismatched"] < report["f1_true"] - 0.3, report


def test_flip_score_on_the_served_world_judge_ranks_on_task_first(world_dir, tmp_path):
    """`make demo-score`'s script on 30 tasks with a response of each kind (its own data file has 3, too few to
    rank kinds by: two builds of the world from equal code, one with logits at every position and one at the
    answer's only, put on-task 0.164 and 0.097 above another topic on those 3 tasks, 0.116 and 0.096 on these
    30). On-task must come first, by a margin below both builds' for each kind."""
    from open_instruct.testing.world_models import score_rows, write_jsonl

    data = tmp_path / "score.jsonl"
    write_jsonl(data, score_rows(0, n_tasks=30))
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path), "PYTHON": sys.executable, "INPUT": str(data)}
    proc = subprocess.run(
        ["bash", "scripts/demo_flip_score.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = read_jsonl(tmp_path / "scored.jsonl")
    judged = [r for r in rows if r["kind"] != "echo"]
    assert all(r["judge_ok"] and r["parsed"] and r["judge_output"] for r in judged)
    # an echo of the prompt is caught by the guard before any judge call
    assert all(
        r["reward"] == 0.0 and "restates the instruction" in r["error"] for r in rows if r["kind"] == "echo"
    )
    by_kind = {k: statistics.fmean(r["reward"] for r in rows if r["kind"] == k) for k in world.KINDS}
    # on-task minus each kind on these 30 tasks, measured on the two builds: another topic 0.116 / 0.096,
    # another form 0.185 / 0.153, a broken constraint 0.079 / 0.059, generic 0.642 / 0.614
    margins = {"wrong_topic": 0.05, "wrong_form": 0.1, "broken_constraint": 0.03, "generic": 0.4}
    for kind, margin in margins.items():
        assert by_kind["on_task"] > by_kind[kind] + margin, (kind, by_kind)
    on_task = [r for r in rows if r["kind"] == "on_task"]
    assert all(world.parse_instruction(r["inferred_instruction"]) is not None for r in on_task)
    assert "inferred:" in proc.stdout


def test_grpo_with_flip_rewards_learns_in_the_world(world_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PRESET": "tiny", "OUTPUT_DIR": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "scripts/train/grpo_flip.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    metrics = read_jsonl(out / "metrics.jsonl")
    rewards = [m["reward_mean"] for m in metrics]
    rise = statistics.fmean(rewards[-3:]) - statistics.fmean(rewards[:3])
    assert rise >= MIN_REWARD_RISE, rewards
    answers = sum(m["judge_answers"] for m in metrics)
    assert (
        sum(m["unparsed"] for m in metrics) < 0.1 * answers and sum(m["judge_failures"] for m in metrics) == 0
    )
    # judged by the world itself, not by the judge: the policy answers on task more often than before
    # Each eval is 32 samples and the run's path depends on timing (async steps), so one eval against another
    # is a coin toss at this size (seen: 0.34 at step 0, 0.44 at steps 10 and 20, 0.31 at step 25): the later
    # half's evals are pooled.
    evals = sorted((out / "eval").glob("step_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))
    before = read_jsonl(evals[0])
    after = [row for path in evals[len(evals) // 2 :] for row in read_jsonl(path)]
    rate = [
        world.on_task_rate((r["messages"][-1]["content"], r["response"]) for r in rows)
        for rows in (before, after)
    ]
    assert evals[0].name == "step_0.jsonl" and len(evals) == 6
    assert rate[1] > rate[0], rate
    assert all("inferred_instruction" in r and "judge_output" in r for r in after)
    assert "reward" in proc.stdout and (out / "training_curves.png").exists()
