"""scripts/train/*.sh on the tiny preset: a full run of the LLM-judge twin, its judge served by the script. (The
FLIP twin runs in tests/e2e/test_flip_world.py; a run interrupted mid-training that must leave no process
behind, judge server included, in tests/e2e/test_cluster_launch_scripts.py.)"""

import contextlib
import json
import os
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


def test_llmjudge_script_runs_the_tiny_preset_and_leaves_no_process(tmp_path, flip_world):
    """One step of 64 samples with the judge the script serves (the preset's many steps run in the FLIP twin's
    test); when the run ends, the judge server, the vLLM engine, Ray and the learner are gone."""
    out, log = tmp_path / "run", tmp_path / "launch.log"
    env = {**os.environ, "PRESET": "tiny", "OUTPUT_DIR": str(out), "PYTHON": sys.executable}
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            ["bash", "scripts/train/grpo_llmjudge.sh", "--total_episodes", "64"],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        seen: dict[int, tuple[psutil.Process, str]] = {}  # every process it started, with its command line
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            for p in descendants(proc.pid):
                with contextlib.suppress(psutil.Error):
                    seen.setdefault(p.pid, (p, " ".join(p.cmdline())))
            time.sleep(0.5)
    text = log.read_text()
    assert proc.poll() == 0, text[-3000:]
    assert any("vllm.entrypoints.openai.api_server" in cmd for _, cmd in seen.values()), (
        "no judge server seen"
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and all("reward/general-quality" in m for m in metrics)
    assert (out / "model.safetensors").exists() and "trained 1 steps" in text
    _, alive = psutil.wait_procs([p for p, _ in seen.values()], timeout=30)
    assert not alive, [p.pid for p in alive]
