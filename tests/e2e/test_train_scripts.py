"""scripts/train/*.sh on the tiny preset: a full run of the LLM-judge twin, and an interrupted FLIP run that
must leave no process behind (judge server, vLLM engine, Ray, learner)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def launch(script: str, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PRESET": "tiny", "OUTPUT_DIR": str(out), "PYTHON": sys.executable}
    return subprocess.Popen(
        ["bash", script, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_llmjudge_script_runs_the_tiny_preset(tmp_path, flip_world):
    out = tmp_path / "run"
    proc = launch("scripts/train/grpo_llmjudge.sh", out, "--total_episodes", "256")  # 4 steps of 64 samples
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-3000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4 and all("reward/general-quality" in m for m in metrics)
    assert (out / "model.safetensors").exists() and "trained 4 steps" in log


def test_interrupted_run_leaves_no_process_behind(tmp_path, flip_world):
    out = tmp_path / "run"
    proc = launch("scripts/train/grpo_flip.sh", out, "--total_episodes", "6400")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # wait until training has taken a step
        if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip():
            break
        time.sleep(1)
    started = descendants(proc.pid)
    assert any("vllm" in " ".join(p.cmdline()) for p in started if p.is_running()), "judge server not found"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
