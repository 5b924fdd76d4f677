"""Best-of-N selection: the tie rule, and `python -m open_instruct.flip bon` against a scripted judge."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.evaluation.best_of_n import best_index
from open_instruct.flip import main
from open_instruct.net_utils import free_port
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, judge_type_of, replies_of, response_of

REPO = Path(__file__).resolve().parent.parent

# response -> (instruction the judge infers, 1-10 rating); responses with FAIL get a 500
JUDGE_VIEW = {
    "rain haiku": ("Write a haiku about rain", 5),
    "off topic": ("zzz", 9),
    "rain haiku too": ("Write a haiku about rain", 7),
    "apple": ("Name a fruit", 6),
    "joke": ("Tell a joke", 3),
}


def judge(messages, n):
    if "FAIL" in messages[-1]["content"]:
        return Reply("down", status=500)
    if judge_type_of(messages) == "flip":
        return Reply(json.dumps({"INFERRED INSTRUCTION": JUDGE_VIEW[response_of(messages)][0]}))
    return Reply(json.dumps({"SCORE": JUDGE_VIEW[replies_of(messages)[0]][1]}))


ROWS = [
    {
        "prompt": "Write a haiku about rain",
        "responses": ["rain haiku", "off topic", "rain haiku too"],
        "id": 0,
    },
    {"instruction": "Name a fruit", "responses": ["FAIL x", "apple"], "id": 1},
    {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "Tell a joke"},
        ],
        "responses": ["FAIL a", "FAIL b"],
        "id": 2,
    },
    {"messages": [{"role": "user", "content": "Tell a joke"}], "responses": ["joke"], "id": 3},
]


def test_ties_go_to_the_earliest_and_failures_are_passed_over():
    assert best_index([0.5, 0.9, 0.2, 0.9]) == 1
    assert best_index([None, 0.1, None]) == 1
    assert best_index([None, None]) is None and best_index([]) is None
    assert best_index([0.0, 0.0]) == 0


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def bon_args(judge_server, inp, out, *extra):
    return [
        *(
            f"bon --input {inp} --output {out} --judge-model hosted_vllm/scripted --judge-api-base "
            f"{judge_server.api_base} --retries 0 --no-progress"
        ).split(),
        *extra,
    ]


def test_bon_picks_the_best_by_flip_and_by_pointwise(tmp_path, capsys):
    inp, out = write_jsonl(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    with ScriptedJudge(judge) as server:
        assert main(bon_args(server, inp, out, "--method", "flip", "pointwise")) == 1  # some calls failed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3] and rows[0]["prompt"] == ROWS[0]["prompt"]

    flip, pointwise = rows[0]["flip"], rows[0]["pointwise"]
    assert flip["scores"] == [1.0, 0.0, 1.0] and flip["best_index"] == 0  # a tie: the earliest wins
    assert flip["best_response"] == "rain haiku" and flip["extracted"][1] == "zzz"
    assert pointwise["scores"] == [0.5, 0.9, 0.7] and pointwise["best_index"] == 1
    assert pointwise["extracted"] == [5, 9, 7] and all(isinstance(t, str) for t in pointwise["judge_outputs"])

    for method in ("flip", "pointwise"):
        assert (
            rows[1][method]["scores"][0] is None and rows[1][method]["best_index"] == 1
        )  # failed one passed over
        assert "failed after 1 attempt(s)" in rows[1][method]["errors"][0]
        assert rows[2][method]["best_index"] is None and rows[2][method]["best_response"] is None
        assert rows[3][method]["best_index"] == 0
    assert rows[3]["flip"]["scores"] == [1.0]  # the last user message is the instruction

    summary = capsys.readouterr()
    assert "selected the best of 8 candidates in 4 rows" in summary.out
    assert "flip: mean best score 1.0000, rows without a best 1, judge failures 3" in summary.out
    assert "flip and pointwise pick the same candidate in 3 of 4 rows" in summary.out
    assert "first failure: judge call failed" in summary.err


def test_bon_defaults_to_flip_and_exits_0_when_all_scored(tmp_path):
    inp, out = write_jsonl(tmp_path / "in.jsonl", [ROWS[0]]), tmp_path / "out.jsonl"
    with ScriptedJudge(judge) as server:
        assert main(bon_args(server, inp, out)) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["flip"]["best_index"] == 0 and "pointwise" not in row


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"prompt": "p"}', "in.jsonl:1: field 'responses' must be a non-empty list of strings"),
        (
            '{"prompt": "p", "responses": []}',
            "in.jsonl:1: field 'responses' must be a non-empty list of strings",
        ),
        (
            '{"prompt": "p", "responses": "r"}',
            "in.jsonl:1: field 'responses' must be a non-empty list of strings",
        ),
        ('{"prompt": "p", "responses": ["a", 1]}', "in.jsonl:1: field 'responses' must be a non-empty list"),
        ('{"responses": ["a"]}', "in.jsonl:1: needs 'instruction' (a string) or 'messages'"),
        ('{"prompt": "p", "responses": ["a"], "flip": 1}', "in.jsonl:1: field 'flip' would be overwritten"),
    ],
)
def test_bad_bon_rows_are_one_line_naming_the_line(tmp_path, capsys, line, message):
    inp = write_jsonl(tmp_path / "in.jsonl", [line])
    code = main(
        [
            "bon",
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--judge-model",
            "hosted_vllm/x",
            "--judge-api-base",
            f"http://127.0.0.1:{free_port()}/v1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_unreachable_judge_is_one_line(tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", ROWS[:1] * 20)
    code = main(
        [
            "bon",
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--judge-model",
            "hosted_vllm/x",
            "--judge-api-base",
            f"http://127.0.0.1:{free_port()}/v1",
            "--retries",
            "0",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unreachable" in err[0]


def test_bon_help_explains_the_tie_rule():
    proc = subprocess.run(
        [sys.executable, "-m", "open_instruct.flip", "bon", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0
    for text in (
        "--method",
        "--judge-model",
        "--on-unparsed",
        "earliest candidate",
        "best_index",
        "Exit status",
    ):
        assert text in proc.stdout
