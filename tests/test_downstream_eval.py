"""The trainer's downstream-evaluation queue: one at a time in the background, a failure reported in one line
with its log and never raised, checkpoints kept while queued. The launcher is a stand-in here; the trainer's
real one is tested end to end in tests/e2e/test_grpo_fast.py."""

import json
import threading
from pathlib import Path

from open_instruct.downstream_eval import DownstreamEvals


def fake_launcher(statuses: dict[int, int], gate: threading.Event | None = None):
    """Writes the results file the real command would write (score = step / 10), or fails with its status."""
    seen = []

    def launch(command: list[str], log: Path, cwd: str) -> int:
        if gate is not None:
            gate.wait(10)
        step = int(command[command.index("--step") + 1])
        seen.append(command)
        status = statuses.get(step, 0)
        if status:
            log.write_text("loading...\nerror: --model x: no such model directory\n")
            return status
        out = Path(command[command.index("--output_dir") + 1])
        result = {"tasks": {"tiny_arith": {"score": step / 10}}}
        (out / f"downstream_step_{step}.json").write_text(json.dumps(result))
        return 0

    return launch, seen


def test_a_failed_evaluation_is_reported_and_the_next_one_runs(tmp_path, capsys):
    launch, seen = fake_launcher({1: 1})
    evals = DownstreamEvals(tmp_path, ["tiny_arith"], max_length=64, include_path="/tasks", launch=launch)
    for step in (0, 1, 2):
        evals.submit(step, tmp_path / f"step_{step}")
    assert evals.wait(30) == 0
    assert evals.failed == [1]
    rows = evals.finished()
    assert [(r["step"], r["downstream/tiny_arith"]) for r in rows] == [(0, 0.0), (2, 0.2)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "downstream evaluation of step 1 failed (exit status 1)" in err[0]
    assert "error: --model x: no such model directory" in err[0] and "downstream_step_1.log" in err[0]
    cmd = seen[0]
    assert cmd[1:3] == ["-m", "open_instruct.evaluate"] and cmd[cmd.index("--max_length") + 1] == "64"
    assert cmd[cmd.index("--include_path") + 1] == "/tasks" and cmd[cmd.index("--tasks") + 1] == "tiny_arith"


def test_submitting_never_waits_and_queued_checkpoints_are_in_use(tmp_path):
    gate = threading.Event()
    launch, _ = fake_launcher({}, gate)
    evals = DownstreamEvals(tmp_path, ["ifeval"], launch=launch)
    evals.submit(1, tmp_path / "ckpt1")  # blocks in the launcher until the gate opens
    evals.submit(2, "org/hub-model")
    assert evals.in_use() == {str(tmp_path / "ckpt1"), "org/hub-model"}
    assert evals.finished() == []
    gate.set()
    assert evals.wait(30) == 0 and evals.in_use() == set()
    assert [r["step"] for r in evals.finished()] == [1, 2]


def test_a_launcher_that_raises_or_writes_nothing_is_a_failure(tmp_path, capsys):
    def launch(command, log, cwd):
        step = command[command.index("--step") + 1]
        if step == "3":
            raise RuntimeError("no GPU left\nmore detail")
        if step == "5":  # a results file the trainer cannot read
            (tmp_path / "eval" / "downstream_step_5.json").write_text("{not json")
        return 0  # exit 0 but, for step 4, no results file

    evals = DownstreamEvals(tmp_path, ["ifeval"], launch=launch)
    for step in (3, 4, 5):
        evals.submit(step, "m")
    assert evals.wait(30) == 0 and evals.failed == [3, 4, 5]
    err = capsys.readouterr().err
    assert "step 3 failed (no GPU left)" in err and "step 4 failed (no downstream_step_4.json written)" in err
    assert "step 5 failed (Expecting property name" in err


def test_the_wait_is_bounded(tmp_path):
    gate = threading.Event()
    launch, _ = fake_launcher({}, gate)
    evals = DownstreamEvals(tmp_path, ["ifeval"], launch=launch)
    evals.submit(5, "m")
    assert evals.wait(0.2) == 1  # still running: the trainer says so and goes on
    gate.set()
    assert evals.wait(30) == 0


def test_finish_evaluates_the_final_model_logs_the_rows_and_says_what_failed(tmp_path, capsys):
    from open_instruct.grpo_config import GRPOConfig
    from open_instruct.train_metrics import MetricsLog

    gate = threading.Event()
    launch, _ = fake_launcher({1: 2}, gate)
    evals = DownstreamEvals(tmp_path, ["tiny_arith"], launch=launch)
    evals.submit(1, "m")  # still running when training ends
    log = MetricsLog(GRPOConfig(), tmp_path)
    threading.Timer(0.5, gate.set).start()
    evals.finish(log, 2, tmp_path, wait_minutes=1)
    log.close()
    assert [(r["step"], r["downstream/tiny_arith"]) for r in log.downstream] == [(2, 0.2)]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["downstream_step"] == 2
    out = capsys.readouterr().out
    assert "waiting up to 1 min for 2 downstream evaluation(s)" in out
    assert "downstream evaluations failed for step(s) [1]" in out
    assert (tmp_path / "downstream.png").is_file()


def test_a_gpu_plan_that_leaves_no_gpu_for_the_evaluations_is_refused_before_training():
    """Failed before: the published layout (8 learners + 16 engines on 24 GPUs) with --oe_eval_tasks started
    training, and every evaluation waited for a GPU that never came free (then --eval_wait_minutes)."""
    from open_instruct.cluster import layout
    from open_instruct.downstream_eval import no_gpu_left
    from open_instruct.grpo_config import parse_args

    flags = "--model_name_or_path m --num_learners_per_node 8 --vllm_num_engines 16 --oe_eval_tasks ifeval"
    cfg = parse_args(flags.split())[0]
    assert no_gpu_left(cfg, layout(cfg, on_gpu=True), 24) == (
        "--oe_eval_tasks: the learners and engines take 24 of the 24 GPUs, leaving none for the evaluations "
        "(a Ray task of 1 GPU each): run one engine fewer (--vllm_num_engines 15) or add a node"
    )
    assert no_gpu_left(cfg, layout(cfg, on_gpu=True), 25) is None
    assert no_gpu_left(cfg, layout(cfg, on_gpu=False), 0) is None  # on CPU they share the cores
    no_evals = parse_args(flags.split()[:-2])[0]
    assert no_gpu_left(no_evals, layout(no_evals, on_gpu=True), 24) is None
