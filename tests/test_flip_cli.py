"""`python -m open_instruct.flip score`: output rows, summary, exit codes and one-line errors."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from open_instruct.f1 import f1_score
from open_instruct.flip import main
from open_instruct.net_utils import free_port
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, response_of

REPO = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def echo_judge(messages, n):
    """Infers 'Write about <response>' and fails for responses that say FAIL."""
    response = response_of(messages)
    if "FAIL" in response:
        return Reply("down", status=500)
    return Reply(
        json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": f"Write about {response}"}), delay=0.01
    )


def score_args(judge, inp, out, *extra):
    return [
        *(
            f"score --input {inp} --output {out} --judge-model hosted_vllm/scripted "
            f"--judge-api-base {judge.api_base} --no-progress --retries 1"
        ).split(),
        *extra,
    ]


def test_scores_rows_in_input_order(tmp_path, capsys):
    rows = [{"instruction": f"Write about topic {i}", "response": f"topic {i}", "id": i} for i in range(20)]
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "Write about\nthe sea"},
            ],
            "response": "the sea",
        }
    )
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    with ScriptedJudge(echo_judge) as judge:
        assert main(score_args(judge, inp, out)) == 0
    got = read_jsonl(out)
    assert [r.get("id") for r in got] == [*range(20), None]
    for row in got:
        assert row["judge_ok"] and row["parsed"] and row["error"] is None
        assert row["inferred_instruction"] == f"Write about {row['response']}"
        assert set(row) >= {
            "inferred_instruction",
            "reward",
            "precision",
            "recall",
            "judge_ok",
            "parsed",
            "error",
        }
    assert got[0]["reward"] == 1.0
    assert got[-1]["reward"] == pytest.approx(f1_score("Write about the sea", "Write about\nthe sea")["f1"])
    summary = capsys.readouterr().out
    assert "scored 21 rows" in summary and "mean reward 1.0000" in summary and "judge failures 0" in summary


def test_failed_rows_have_null_reward_and_exit_1(tmp_path, capsys):
    rows = [
        {"instruction": "Write about a", "response": "a"},
        {"instruction": "Write about b", "response": "FAIL b"},
    ]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    with ScriptedJudge(echo_judge) as judge:
        assert main(score_args(judge, inp, out)) == 1
    ok, failed = read_jsonl(out)
    assert ok["reward"] == 1.0
    assert (
        failed["reward"] is None
        and failed["judge_ok"] is False
        and "failed after 2 attempt(s)" in failed["error"]
    )
    assert "judge failures 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"instruction": "a", "response": "b"}', "{not json"], "in.jsonl:2: not valid JSON"),
        (['{"instruction": "a"}'], "in.jsonl:1: field 'response' is missing or not a string"),
        (['{"response": "b"}'], "in.jsonl:1: needs 'instruction' (a string) or 'messages'"),
        (
            ['{"messages": [{"role": "assistant", "content": "x"}], "response": "b"}'],
            "in.jsonl:1: field 'messages' has no user turn",
        ),
        (['{"messages": "hello", "response": "b"}'], "in.jsonl:1: field 'messages' must be a list"),
        (["[1, 2]"], "in.jsonl:1: expected a JSON object"),
        ([""], "in.jsonl: no rows"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, capsys, lines, message):
    inp = write_jsonl(tmp_path / "in.jsonl", lines)
    # no judge is contacted: input is validated first
    code = main(
        [
            "score",
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--judge-model",
            "hosted_vllm/x",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_input_file(tmp_path, capsys):
    code = main(["score", "--input", str(tmp_path / "nope.jsonl"), "--output", "o", "--judge-model", "m"])
    assert code == 2 and "nope.jsonl: no such file" in capsys.readouterr().err


def run_cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "open_instruct.flip", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def test_unreachable_judge_exits_fast_with_one_line(tmp_path):
    rows = [{"instruction": f"i{i}", "response": f"r{i}"} for i in range(50)]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    start = time.perf_counter()
    proc = run_cli(
        "score",
        "--input",
        str(inp),
        "--output",
        str(tmp_path / "o.jsonl"),
        "--no-progress",
        "--judge-model",
        "hosted_vllm/x",
        "--judge-api-base",
        f"http://127.0.0.1:{free_port()}/v1",
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: judge hosted_vllm/x at http://127.0.0.1:")
        and "unreachable" in lines[0]
    )
    assert elapsed < 30


def test_the_trainers_judge_flag_names_work_here_too(tmp_path, capsys):
    """One spelling per option: `--llm_judge_*` as in the trainer (the dashed names stay as aliases)."""
    inp, out = (
        write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Write about cats", "response": "cats"}]),
        tmp_path / "o.jsonl",
    )
    with ScriptedJudge(echo_judge) as judge:
        code = main(
            [
                *(
                    f"score --input {inp} --output {out} --llm_judge_model hosted_vllm/scripted "
                    f"--llm_judge_api_base {judge.api_base} --llm_judge_retries 0 --llm_judge_timeout 30 "
                    "--no-progress"
                ).split()
            ]
        )
    assert code == 0 and read_jsonl(out)[0]["reward"] == 1.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--llm_judge_model", "Qwen/Qwen3-4B"],
            "not a litellm id (provider/model); for a judge served by vLLM write hosted_vllm/Qwen/Qwen3-4B",
        ),
        (
            ["--llm_judge_model", "hosted_vllm/Qwen/Qwen3-4B"],
            "no address for the judge: set --llm_judge_api_base",
        ),
    ],
)
def test_judge_settings_are_one_line_before_any_row(tmp_path, capsys, monkeypatch, flags, message):
    """Failed before: a model id without a provider, or hosted_vllm without an address, surfaced per row as a
    failure to reach api.openai.com."""
    monkeypatch.delenv("HOSTED_VLLM_API_BASE", raising=False)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Write about cats", "response": "cats"}])
    code = main(
        ["score", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--no-progress", *flags]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_flag_value_is_a_usage_error(tmp_path):
    proc = run_cli("score", "--input", "x", "--output", "y", "--judge-model", "m", "--max-concurrency", "0")
    assert proc.returncode == 2 and "--max-concurrency: must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_explains_the_command():
    proc = run_cli("score", "--help")
    assert proc.returncode == 0
    for text in ("--judge-model", "--on-unparsed", "instruction", "Exit status"):
        assert text in proc.stdout


def test_several_judge_replicas_share_the_rows_and_one_that_is_down_loses_none(tmp_path, capsys):
    rows = [{"instruction": f"Write about topic {i}", "response": f"topic {i}"} for i in range(30)]
    rows += rows[:5]  # the same row again: judged once
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with ScriptedJudge(echo_judge) as a, ScriptedJudge(echo_judge) as b:
        bases = f"{a.api_base},{dead},{b.api_base}"
        args = score_args(a, inp, out, "--llm_judge_api_base", bases, "--retries", "0")
        assert main(args) == 0
    assert all(r["reward"] == 1.0 for r in read_jsonl(out))
    assert a.requests > 0 and b.requests > 0 and a.requests + b.requests == 30
    summary = capsys.readouterr().out
    assert (
        "judge calls 30 (+5 identical prompts answered by them)" in summary and "failovers 0" not in summary
    )


def test_a_bad_api_base_is_one_line(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "x", "response": "y"}])
    args = f"score --input {inp} --output {tmp_path / 'o.jsonl'} --llm_judge_model hosted_vllm/j".split()
    assert main([*args, "--llm_judge_api_base", "http://a:1/v1,b:2/v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --llm_judge_api_base: 'b:2/v1' is not an http(s) URL", err


@pytest.mark.parametrize("command", ["score", "bon"])
def test_output_equal_to_input_is_refused(tmp_path, capsys, command):
    inp = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "x", "response": "y"}])
    before = inp.read_text()
    args = f"{command} --input {inp} --output {tmp_path}/./rows.jsonl --llm_judge_model hosted_vllm/j".split()
    assert main([*args, "--llm_judge_api_base", "http://127.0.0.1:9/v1"]) == 2
    assert "is the --input file" in capsys.readouterr().err and inp.read_text() == before
