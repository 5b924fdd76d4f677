"""`python -m open_instruct.flip_eval` against a scripted judge: accuracies worked out by hand (Ties
included), failures, resuming, refused settings, bad input, the report files."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from open_instruct.f1 import f1_score
from open_instruct.flip_eval import main
from open_instruct.net_utils import free_port
from open_instruct.testing.scripted_judge import (
    Reply,
    ScriptedJudge,
    judge_type_of,
    replies_of,
    request_of,
    response_of,
)

REPO = Path(__file__).resolve().parent.parent

# What the scripted judge says about each response: (the instruction FLIP infers, the 1-10 rating).
# Pairwise prefers the higher rating and, on equal ratings, reply A; listwise picks the highest rating.
JUDGE_VIEW = {
    "f1-chosen": ("Write a poem about the sea", 8),
    "f1-r1": ("List prime numbers", 9),
    "f1-r2": ("zzz", 3),
    "f1-r3": ("zzz", 2),
    "f2-chosen": ("Explain photosynthesis to a child", 9),
    "f2-r1": ("Explain photosynthesis to a child", 4),
    "f2-r2": ("zzz", 5),
    "f2-r3": ("zzz", 6),
    "m1-chosen": ("GARBLE solve two plus two", 10),
    "m1-r1": ("zzz", 1),
    "m1-r2": ("zzz", 2),
    "m1-r3": ("zzz", 3),
    "m2-chosen": ("Compute the square root of nine", 10),
    "m2-r1 FAIL": ("zzz", 1),
    "m2-r2": ("zzz", 2),
    "m2-r3": ("zzz", 3),
    "p1-chosen": ("OUTOFRANGE answer in three words", 9),
    "p1-r1": ("zzz", 1),
    "p1-r2": ("zzz", 2),
    "p1-r3": ("zzz", 3),
    "red": ("Name a primary color", 9),
    "blue": ("Name a primary color", 8),
    "yellow": ("Name a color", 7),
    "green": ("Name a color", 4),
    "purple": ("zzz", 2),
    "mars": ("Name a planet", 6),
    "venus": ("Name a planet", 9),
    "pluto": ("zzz", 7),
    "moon": ("zzz", 1),
}


def rb2_row(id_, subset, prompt, chosen, rejected):
    return {
        "id": id_,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "subset": subset,
        "num_correct": len(chosen),
        "num_incorrect": len(rejected),
        "total_completions": len(chosen) + len(rejected),
        "models": ["m"] * (len(chosen) + len(rejected)),
    }


ROWS = [
    rb2_row("f1", "Focus", "Write a poem about the sea", ["f1-chosen"], ["f1-r1", "f1-r2", "f1-r3"]),
    rb2_row("f2", "Focus", "Explain photosynthesis to a child", ["f2-chosen"], ["f2-r1", "f2-r2", "f2-r3"]),
    rb2_row("m1", "Math", "GARBLE solve two plus two", ["m1-chosen"], ["m1-r1", "m1-r2", "m1-r3"]),
    rb2_row("m2", "Math", "Compute the square root of nine", ["m2-chosen"], ["m2-r1 FAIL", "m2-r2", "m2-r3"]),
    rb2_row(
        "p1", "Precise IF", "OUTOFRANGE answer in three words", ["p1-chosen"], ["p1-r1", "p1-r2", "p1-r3"]
    ),
    rb2_row("ref:0", "Ties", "Name a primary color", ["red"], ["green", "purple"]),
    rb2_row("tied:0", "Ties", "Name a primary color", ["red", "blue", "yellow"], ["green", "purple"]),
    rb2_row("ref:1", "Ties", "Name a planet", ["mars"], ["pluto", "moon"]),
    rb2_row("tied:1", "Ties", "Name a planet", ["mars", "venus"], ["pluto", "moon"]),
]


class RB2Judge:
    """Answers from JUDGE_VIEW. While `failing`, a prompt that shows a response with FAIL gets a 500; a
    GARBLE request gets an answer with no verdict (pairwise); an OUTOFRANGE one gets index 7 (listwise)."""

    def __init__(self, failing: bool = True):
        self.failing = failing

    def __call__(self, messages, n):
        kind = judge_type_of(messages)
        if self.failing and "FAIL" in messages[-1]["content"]:
            return Reply("down", status=500)
        if kind == "flip":
            return answer("INFERRED INSTRUCTION", JUDGE_VIEW[response_of(messages)][0])
        ratings = [JUDGE_VIEW[r][1] for r in replies_of(messages)]
        if kind == "quality":
            return answer("SCORE", ratings[0])
        if kind == "pairwise":
            if "GARBLE" in request_of(messages):
                return Reply("Both replies have merit; I cannot decide.")
            return answer("BETTER_RESPONSE", "A" if ratings[0] >= ratings[1] else "B")
        if "OUTOFRANGE" in request_of(messages):
            return answer("BEST_RESPONSE_INDEX", 7)
        return answer("BEST_RESPONSE_INDEX", ratings.index(max(ratings)))


def answer(key, value):
    return Reply(json.dumps({"REASONING": "scripted", key: value}))


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_args(judge, data, out, *extra):
    return [
        *(
            f"--dataset {data} --output-dir {out} --judge-model hosted_vllm/scripted "
            f"--judge-api-base {judge.api_base} --retries 0 --no-progress"
        ).split(),
        *extra,
    ]


def read_results(out: Path) -> dict:
    return {r["method"]: r for r in json.loads((out / "results.json").read_text())}


def read_predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


# Worked out by hand from JUDGE_VIEW (m2 fails while the judge is failing):
#   Focus      f1: flip right (1 vs 0, 0, 0); the rating 8 loses to 9, so pointwise, pairwise, listwise wrong.
#              f2: flip wrong (1 vs 1 is not strictly higher); the others right (9 above 4, 5, 6).
#   Math       m1: right but for pairwise, whose verdicts never parse (lost comparisons); m2: failed.
#   Precise IF p1: right but for listwise, whose pick (7 of 4) does not parse.
#   Ties       flip scores: ref:0 1 | .8 0 (gap .2); tied:0 1 1 .8 | .8 0 (gap 0, spread .2, not accurate);
#              ref:1 1 | 0 0 (gap 1); tied:1 1 1 | 0 0 (gap 1, spread 0).
#              pointwise ratings: ref:0 9 | 4 2 (gap 5); tied:0 9 8 7 | 4 2 (gap 3, spread 2);
#              ref:1 6 | 7 1 (gap -1); tied:1 6 9 | 7 1 (gap -1, spread 3). Ratings are /10 as rewards; the
#              rule compares gaps and takes their ratios, so the scale does not matter.
#              pairwise: ref:0 and tied:0 right, the planets wrong (6 < 7); listwise picks red, red, pluto,
#              venus: 3 of 4.
F_COLOR = f1_score("Name a color", "Name a primary color")["f1"]  # 0.8
TIES_FLIP = (
    0.3 * 1 / 2 + 0.3 * 2 / 2 + 0.2 * 1 / 2 + 0.2 * 1 / 2 + 0.01 * (math.tanh(0 / (1 - F_COLOR) - 1) + 1) / 2
)
TIES_POINTWISE = (
    0.3 * 1 / 2
    + 0.3 * 1 / 2
    + 0.2 * 1 / 2
    + 0.2 * 1 / 2
    + 0.01 * (math.tanh(3 / 2 - 1) + math.tanh(-1 / 3 - 1)) / 2
)
EXPECTED = {
    "flip": {"Precise IF": 1.0, "Math": 1.0, "Focus": 0.5, "Ties": TIES_FLIP},
    "pointwise": {"Precise IF": 1.0, "Math": 1.0, "Focus": 0.5, "Ties": TIES_POINTWISE},
    "pairwise": {"Precise IF": 1.0, "Math": 0.0, "Focus": 0.5},
    "listwise": {"Precise IF": 0.0, "Math": 1.0, "Focus": 0.5},
}
# RewardBench 2's own score: m2 (failed) and p1's listwise pick (out of range) have no verdict, 1/4 each;
# flip's f2 ties its chosen response with one rejected at the top, 1/2; m1's pairwise verdicts lose.
OFFICIAL = {
    "flip": {"Precise IF": 1.0, "Math": 0.625, "Focus": 0.75, "Ties": TIES_FLIP},
    "pointwise": {"Precise IF": 1.0, "Math": 0.625, "Focus": 0.5, "Ties": TIES_POINTWISE},
    "pairwise": {"Precise IF": 1.0, "Math": 0.125, "Focus": 0.5},
    "listwise": {"Precise IF": 0.25, "Math": 0.625, "Focus": 0.5},
}


def test_accuracies_worked_out_by_hand(tmp_path, capsys):
    data, out = write_rows(tmp_path / "rb2.jsonl", ROWS), tmp_path / "out"
    with ScriptedJudge(RB2Judge()) as judge:
        assert main(eval_args(judge, data, out)) == 1  # m2 failed
    results = read_results(out)
    assert list(results) == ["flip", "pointwise", "pairwise", "listwise"]
    for method, expected in EXPECTED.items():
        accuracy = results[method]["accuracy"]
        assert list(accuracy) == ["overall", *expected]  # RewardBench 2's subset order
        assert accuracy == pytest.approx({"overall": sum(expected.values()) / len(expected), **expected})
        official = OFFICIAL[method]
        assert results[method]["official"] == pytest.approx(
            {"overall": sum(official.values()) / len(official), **official}
        )
        # a failed example is neither right nor wrong: Math is m1 alone
        assert results[method]["n"] == 8 and results[method]["failures"] == 1
        assert results[method]["n_per_subset"] == {"Precise IF": 1, "Math": 1, "Focus": 2, "Ties": 4}
    assert (
        results["pairwise"]["ties_apart"]["accuracy"] == 0.5
        and results["listwise"]["ties_apart"]["accuracy"] == 0.75
    )
    assert results["flip"]["ties"] == pytest.approx(
        {
            "score": TIES_FLIP,
            "prompts": 2,
            "ref_rows": 2,
            "tied_rows": 2,
            "ref_accuracy": 1.0,
            "tied_accuracy": 0.5,
            "correctness_preferred": 0.5,
            "correctness_preferred_hard": 0.5,
            "margin_score": (math.tanh(-1) + 1) / 2,
        }
    )
    assert [results[m]["unparsed"] for m in results] == [0, 0, 6, 1]
    assert [results[m]["failed_calls"] for m in results] == [1, 1, 2, 1]

    predictions = read_predictions(out)
    assert len(predictions) == 4 * len(ROWS)
    by_key = {(p["method"], p["id"]): p for p in predictions}
    assert {p["status"] for p in predictions if p["id"] == "m2"} == {"failed"}
    pairwise = by_key[("pairwise", "tied:0")]["calls"]
    assert len(pairwise) == 2 * 3 * 2 and sorted(c["chosen_as"] for c in pairwise) == ["A"] * 6 + ["B"] * 6
    listwise = by_key[("listwise", "f2")]["calls"][0]
    assert sorted(listwise["order"]) == [0, 1, 2, 3] and listwise["picked"] == 0
    flip = by_key[("flip", "f1")]
    assert (
        flip["scores"] == [1.0, 0.0, 0.0, 0.0]
        and flip["calls"][0]["extracted"] == "Write a poem about the sea"
    )
    assert all(isinstance(c["judge_output"], str) for c in flip["calls"])

    report = (out / "report.md").read_text()
    assert "| **overall** |" in report and "(50.0)†" in report and "(75.0)†" in report and "random" in report
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out / "accuracy.png").shape
    assert width > 600 and height > 300
    summary = capsys.readouterr()
    assert "flip      RewardBench 2 score 75.7%, accuracy 78.8%" in summary.out
    assert "rerun the same command" in summary.err


def test_rerun_skips_judged_examples_and_retries_failed_ones(tmp_path, capsys):
    data, out = write_rows(tmp_path / "rb2.jsonl", ROWS), tmp_path / "out"
    script = RB2Judge(failing=True)
    with ScriptedJudge(script) as judge:
        assert main(eval_args(judge, data, out)) == 1
        first = judge.requests
        script.failing = False  # the judge is back
        assert main(eval_args(judge, data, out)) == 0
        # only m2 is judged again: 4 FLIP and 4 pointwise calls, 3 x 2 pairwise comparisons, 1 listwise call
        assert judge.requests - first == 4 + 4 + 6 + 1
        assert main(eval_args(judge, data, out)) == 0
        assert judge.requests - first == 15
    results = read_results(out)
    assert results["flip"]["failures"] == 0 and results["flip"]["n"] == 9
    assert results["pairwise"]["accuracy"]["Math"] == 0.5  # m1 lost, m2 won
    assert "0 judged before, 36 to judge" in capsys.readouterr().out


def test_interrupted_run_resumes_from_its_predictions(tmp_path, capsys):
    data = write_rows(tmp_path / "rb2.jsonl", ROWS)
    with ScriptedJudge(RB2Judge(failing=False)) as judge:
        assert main(eval_args(judge, data, tmp_path / "full")) == 0
        expected = read_results(tmp_path / "full")
        # a run killed after 10 examples, in the middle of writing the 11th
        out = tmp_path / "out"
        out.mkdir()
        (out / "run_config.json").write_text((tmp_path / "full" / "run_config.json").read_text())
        lines = (tmp_path / "full" / "predictions.jsonl").read_text().splitlines()
        (out / "predictions.jsonl").write_text("\n".join(lines[:10]) + "\n" + lines[10][:25])
        before = judge.requests
        assert main(eval_args(judge, data, out)) == 0
        sent_again = judge.received[before:]
    assert "10 judged before, 26 to judge" in capsys.readouterr().out
    # the 26 examples' calls, and no more; an identical prompt (the same response in two examples) is sent once
    assert 0 < len(sent_again) <= sum(len(json.loads(line)["calls"]) for line in lines[10:])
    assert len({json.dumps(m) for m in sent_again}) == len(sent_again)
    assert read_results(out) == expected
    assert len(read_predictions(out)) == 36  # the half-written line was dropped, its example judged again


def test_a_judge_that_always_prefers_one_position_loses_pairwise(tmp_path):
    data, out = write_rows(tmp_path / "rb2.jsonl", ROWS[:2]), tmp_path / "out"
    with ScriptedJudge(lambda messages, n: answer("BETTER_RESPONSE", "A")) as judge:
        assert main(eval_args(judge, data, out, "--method", "pairwise")) == 0
    assert read_results(out)["pairwise"]["accuracy"] == {"overall": 0.0, "Focus": 0.0}


def test_subsets_and_limit_select_examples(tmp_path):
    data, out = write_rows(tmp_path / "rb2.jsonl", ROWS), tmp_path / "out"
    with ScriptedJudge(RB2Judge()) as judge:
        args = eval_args(judge, data, out, "--method", "flip", "--subsets", "ties", "focus", "--limit", "1")
        assert main(args) == 0
    # the first Focus prompt, and the first Ties prompt with both its rows
    assert sorted(p["id"] for p in read_predictions(out)) == ["f1", "ref:0", "tied:0"]


def test_other_settings_in_the_same_output_dir_are_refused(tmp_path, capsys):
    data, out = write_rows(tmp_path / "rb2.jsonl", ROWS[:1]), tmp_path / "out"
    with ScriptedJudge(RB2Judge()) as judge:
        assert main(eval_args(judge, data, out, "--method", "flip")) == 0
        capsys.readouterr()
        args = eval_args(judge, data, out, "--method", "flip")
        args[args.index("hosted_vllm/scripted")] = "hosted_vllm/other"
        assert main(args) == 2
        # the order of the responses shown to listwise changes with the seed: a new seed is another run
        assert main(eval_args(judge, data, out, "--method", "listwise", "--seed", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("run_config.json: this output dir holds a run with" in e for e in err)
    assert (
        "judge_model 'hosted_vllm/scripted' (this run: 'hosted_vllm/other')" in err[0] and "seed 0" in err[1]
    )


def test_a_run_saved_before_the_thinking_settings_resumes_and_a_changed_one_is_refused(tmp_path, capsys):
    data, out = write_rows(tmp_path / "rb2.jsonl", ROWS[:1]), tmp_path / "out"
    with ScriptedJudge(RB2Judge()) as judge:
        assert main(eval_args(judge, data, out, "--method", "flip")) == 0
        saved = json.loads((out / "run_config.json").read_text())
        for key in ("judge_enable_thinking", "judge_structured_output"):
            del saved[key]  # as an earlier version wrote it
        (out / "run_config.json").write_text(json.dumps(saved))
        assert main(eval_args(judge, data, out, "--method", "flip")) == 0
        capsys.readouterr()
        assert (
            main(eval_args(judge, data, out, "--method", "flip", "--llm_judge_enable_thinking", "false")) == 2
        )
    assert "judge_enable_thinking None (this run: False)" in capsys.readouterr().err


def with_row(index, **change):
    rows = [dict(r) for r in ROWS[:3]]
    rows[index].update(change)
    return rows


@pytest.mark.parametrize(
    "rows,message",
    [
        (
            [{k: v for k, v in ROWS[0].items() if k not in ("subset", "prompt")}],
            ":1: missing columns prompt, subset",
        ),
        (with_row(1, chosen=[]), ":2 (id f2): 'chosen' is an empty list"),
        (with_row(2, rejected="m1-r1"), ":3 (id m1): 'rejected' must be a list of strings, got str"),
        (with_row(1, rejected=["a", 3]), ":2 (id f2): 'rejected' must be a list of strings"),
        (with_row(0, num_incorrect=2), ":1 (id f1): 'num_incorrect' is 2 but the lists hold 3"),
        (with_row(2, id="f1"), ":3: id 'f1' repeats "),
        (with_row(0, subset="Ties"), ":1 (id f1): a Ties row's id must be 'ref:<n>' or 'tied:<n>'"),
        (with_row(0, prompt=""), ":1 (id f1): 'prompt' must be a non-empty string"),
        (["not an object"], ":1: expected an object, got str"),
    ],
)
def test_bad_rows_are_one_line_naming_the_row(tmp_path, capsys, rows, message):
    data = write_rows(tmp_path / "rb2.jsonl", rows)
    # no judge is contacted: every row is checked first
    code = main(
        [
            "--dataset",
            str(data),
            "--output-dir",
            str(tmp_path / "out"),
            "--judge-model",
            "hosted_vllm/x",
            "--judge-api-base",
            f"http://127.0.0.1:{free_port()}/v1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {data}:") and message in err  # FILE:LINE, counted from 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("missing.jsonl", None, "missing.jsonl: file not found"),
        ("rb2.csv", "id,prompt\n", "rb2.csv: unsupported file type"),
        ("rb2.parquet", "not parquet", "rb2.parquet: not a readable parquet file"),
        (
            "rb2.jsonl",
            "{broken\n",
            "rb2.jsonl:1: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        ),
        ("rb2.jsonl", "", "rb2.jsonl: no rows"),
    ],
)
def test_bad_files_are_one_line(tmp_path, capsys, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    code = main(
        ["--dataset", str(tmp_path / name), "--output-dir", str(tmp_path / "out"), "--judge-model", "m"]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_unknown_subset_is_named(tmp_path, capsys):
    data = write_rows(tmp_path / "rb2.jsonl", ROWS)
    assert (
        main(
            [
                "--dataset",
                str(data),
                "--output-dir",
                str(tmp_path / "o"),
                "--judge-model",
                "m",
                "--subsets",
                "Chat",
            ]
        )
        == 2
    )
    assert "--subsets: 'Chat' not in" in capsys.readouterr().err


def test_parquet_dataset_loads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, out = tmp_path / "rb2.parquet", tmp_path / "out"
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), data)
    with ScriptedJudge(RB2Judge()) as judge:
        assert main(eval_args(judge, data, out, "--method", "pointwise")) == 0
    assert read_results(out)["pointwise"]["accuracy"]["Focus"] == 0.5


def run_cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "open_instruct.flip_eval", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_unreachable_judge_exits_fast_with_one_line(tmp_path):
    data = write_rows(tmp_path / "rb2.jsonl", ROWS)
    start = time.perf_counter()
    proc = run_cli(
        "--dataset",
        str(data),
        "--output-dir",
        str(tmp_path / "out"),
        "--no-progress",
        "--judge-model",
        "hosted_vllm/x",
        "--judge-api-base",
        f"http://127.0.0.1:{free_port()}/v1",
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: judge hosted_vllm/x at http://127.0.0.1:")
    assert "unreachable" in lines[0] and time.perf_counter() - start < 30


def test_hub_dataset_that_cannot_be_loaded_is_one_line(tmp_path):
    proc = run_cli(
        "--dataset",
        "allenai/reward-bench-2",
        "--output-dir",
        str(tmp_path / "out"),
        "--judge-model",
        "m",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: allenai/reward-bench-2: could not load split 'test'"
    )


def test_help_documents_every_flag():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for text in (
        "--dataset",
        "--method",
        "--judge-model",
        "--judge-api-base",
        "--output-dir",
        "--subsets",
        "--limit",
        "--seed",
        "--max-concurrency",
        "--timeout",
        "--retries",
        "--on-unparsed",
        "Ties",
        "resumes",
        "Exit status",
    ):
        assert text in proc.stdout
