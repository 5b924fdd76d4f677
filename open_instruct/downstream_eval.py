"""Downstream evaluation of the trainer's checkpoints, in the background (`--oe_eval_tasks` / `--eval_tasks`).

Each saved checkpoint (and the initial model with `--eval_on_step_0`) is queued; one worker thread runs
`python -m open_instruct.evaluate` on them one at a time, so training never waits for an evaluation. Where it
runs is the `launch` callable's business: the trainer passes `ray_launcher`, a Ray task of one GPU (no GPU on
a CPU cluster) that starts the command there. The results land in OUTPUT_DIR/eval/downstream_step_N.json,
the command's output in downstream_step_N.log beside it. A failed evaluation is one line naming the log and
never stops training.
"""

import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from open_instruct.cli_utils import first_line

# launch(command, log path, working directory) -> exit status
Launcher = Callable[[list[str], Path, str], int]


def _die_with_parent() -> None:
    """Linux: the evaluation is killed with the process that started it (no orphaned vLLM on a stop)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_local(command: list[str], log: Path, cwd: str) -> int:
    """Run `command` here, its output into `log`."""
    with log.open("w") as out:
        return subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, preexec_fn=_die_with_parent
        ).returncode


def ray_launcher(num_gpus: float) -> Launcher:
    """Each evaluation as a Ray task that holds `num_gpus` while it runs (Ray sets CUDA_VISIBLE_DEVICES to
    them) and runs the command on that node; the output directory must be one every node sees, as for the
    training state. It waits for a free GPU when none is."""
    import ray

    remote = ray.remote(num_cpus=0, num_gpus=num_gpus)(run_local)

    def launch(command: list[str], log: Path, cwd: str) -> int:
        return ray.get(remote.remote(command, log, cwd))

    return launch


@dataclass
class Job:
    step: int
    model: str


class DownstreamEvals:
    """The queue of checkpoints to evaluate and the worker that runs them, one at a time."""

    def __init__(
        self,
        out: Path,
        tasks: list[str],
        max_length: int | None = None,
        include_path: str | None = None,
        launch: Launcher = run_local,
        cwd: str = ".",
    ):
        self.dir = out / "eval"
        self.tasks, self.max_length, self.include_path = tasks, max_length, include_path
        self.launch, self.cwd = launch, cwd
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.done: queue.Queue[dict] = queue.Queue()  # rows for metrics.jsonl, taken by the trainer
        self.pending: list[Job] = []  # queued or running
        self.failed: list[int] = []
        self.lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="downstream-eval", daemon=True)
        self.worker.start()

    def command(self, job: Job) -> list[str]:
        cmd = [sys.executable, "-m", "open_instruct.evaluate", "--model", job.model]
        cmd += ["--tasks", ",".join(self.tasks), "--output_dir", str(self.dir), "--step", str(job.step)]
        if self.max_length:
            cmd += ["--max_length", str(self.max_length)]
        if self.include_path:
            cmd += ["--include_path", self.include_path]
        return cmd

    def submit(self, step: int, model: str | Path) -> None:
        job = Job(step, str(Path(model).resolve()) if Path(model).exists() else str(model))
        with self.lock:
            self.pending.append(job)
        self.jobs.put(job)

    def in_use(self) -> set[str]:
        """Checkpoints still to be evaluated (not to be pruned yet)."""
        with self.lock:
            return {j.model for j in self.pending}

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            log = self.dir / f"downstream_step_{job.step}.log"
            t0 = time.perf_counter()
            result = self.dir / f"downstream_step_{job.step}.json"
            try:
                status = self.launch(self.command(job), log, self.cwd)
                problem = None if status == 0 else f"exit status {status}"
                if problem is None and not result.is_file():
                    problem = f"no {result.name} written"
                if problem is None:
                    self.done.put(self.row(job.step, json.loads(result.read_text())))
            except Exception as e:  # noqa: BLE001  (a failed evaluation is reported, never raised)
                problem = first_line(e)
            if problem is None:
                print(
                    f"downstream evaluation of step {job.step}: {time.perf_counter() - t0:.0f}s -> {result}"
                )
            else:
                self.failed.append(job.step)
                print(
                    f"downstream evaluation of step {job.step} failed ({problem}): {_last_line(log)}; log: {log}",
                    file=sys.stderr,
                )
            with self.lock:
                self.pending.remove(job)

    @staticmethod
    def row(step: int, result: dict) -> dict:
        """A metrics.jsonl row: the step and each task's headline score as downstream/<task>."""
        return {
            "step": step,
            "downstream_step": step,
            **{f"downstream/{name}": r["score"] for name, r in result["tasks"].items()},
        }

    def finished(self) -> list[dict]:
        """Rows of the evaluations finished since the last call."""
        rows = []
        while not self.done.empty():
            rows.append(self.done.get_nowait())
        return rows

    def wait(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the queue to empty; the number of evaluations left."""
        self.jobs.put(None)
        self.worker.join(timeout)
        with self.lock:
            return len(self.pending)

    def finish(self, log, step: int, model: Path, wait_minutes: float) -> None:
        """At the end of training: evaluate the final model, wait at most `wait_minutes` for the queue, say
        what did not finish or failed, log the rows (train_metrics.MetricsLog) and draw downstream.png."""
        from open_instruct.train_metrics import plot_downstream

        self.submit(step, model)
        print(f"waiting up to {wait_minutes:g} min for {len(self.in_use())} downstream evaluation(s)")
        left = self.wait(wait_minutes * 60)
        for row in self.finished():
            log.log_downstream(row)
        if left:
            print(
                f"{left} downstream evaluation(s) still running after --eval_wait_minutes {wait_minutes:g}: stopped"
            )
        if self.failed:
            print(f"downstream evaluations failed for step(s) {self.failed}: see {self.dir}/*.log")
        plot_downstream(log.downstream, self.dir.parent / "downstream.png")


def _last_line(log: Path) -> str:
    """The log's last non-empty line (the command's one-line error), or a placeholder."""
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return first_line(lines[-1]) if lines else "empty log"


def no_gpu_left(cfg, plan, gpus: float) -> str | None:
    """Why the evaluations could never start on a GPU cluster whose GPUs the plan (cluster.Layout) takes
    in full, else None: each waits for a GPU of its own, so the run refuses to start rather than queue
    evaluations that never run."""
    if not cfg.oe_eval_tasks or not plan.on_gpu or gpus - plan.needs()["GPU"] >= 1:
        return None
    return (
        f"--oe_eval_tasks: the learners and engines take {plan.needs()['GPU']:g} of the {gpus:g} GPUs, leaving "
        f"none for the evaluations (a Ray task of 1 GPU each): run one engine fewer (--vllm_num_engines "
        f"{max(cfg.vllm_num_engines - 1, 1)}) or add a node"
    )


def for_run(cfg, out: Path, on_gpu: bool) -> "DownstreamEvals | None":
    """The trainer's queue for `cfg` (grpo_config.GRPOConfig), or None without --oe_eval_tasks."""
    from open_instruct.evaluation.downstream_tasks import split_names

    if not cfg.oe_eval_tasks:
        return None
    return DownstreamEvals(
        out.resolve(),
        split_names(cfg.oe_eval_tasks),
        max_length=cfg.oe_eval_max_length or None,
        include_path=str(Path(cfg.eval_include_path).resolve()) if cfg.eval_include_path else None,
        launch=ray_launcher(1 if on_gpu else 0),
        cwd=os.getcwd(),
    )
