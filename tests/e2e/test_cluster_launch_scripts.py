"""The Slurm scripts and Beaker replicas run end to end on this machine. `srun` and `scontrol` are stand-ins
(srun runs its command here, scontrol lists "localhost" once per node); everything else is real: Ray clusters
started with `ray start`, scripts/train/grpo_*.sh and the trainer, and in two tests the tiny judge served by
vLLM. After every run no process it started may be left. The variables' checks and the Beaker spec are tested
in tests/test_cluster_launch.py."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from open_instruct.net_utils import free_port

REPO = Path(__file__).resolve().parents[2]

# A run of the tiny preset cut to one step, with no eval and no checkpoint on the way.
ONE_STEP = ["--total_episodes", "64", "--local_eval_every", "0", "--save_freq", "0"]


@pytest.fixture
def slurm_env(tmp_path, flip_world):
    """Stand-ins for srun and scontrol on PATH, and the variables of a small CPU run on the tiny preset."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun runs the command here, without srun's own options. With FAKE_RAY_TEMP set, each step gets a Ray
    # temporary folder of its own, as a real node has its own /tmp: Ray names a node's sockets after those it
    # finds in that folder, so two nodes starting together in one folder can take the same names.
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [[ $# -gt 0 && "$1" == -* ]]; do\n'
        '  case "$1" in -w|-N|-n|-c) shift 2 ;; *) shift ;; esac\ndone\n'
        'if [[ -n "${FAKE_RAY_TEMP:-}" ]]; then\n'
        '  export RAY_START_ARGS="${RAY_START_ARGS:-} --temp-dir=$(mktemp -d "$FAKE_RAY_TEMP-XXXXXX")"\nfi\n'
        'exec "$@"\n'
    )
    (bin_dir / "scontrol").write_text(  # lists the nodes; a requeue is written down
        '#!/usr/bin/env bash\nif [[ "$1" == requeue ]]; then echo "requeue $2" >> "$OUTPUT_DIR/scontrol.log"; exit 0; fi\n'
        '[[ "$1 $2" == "show hostnames" ]] || exit 1\n'
        'for _ in $(seq "$FAKE_NODES"); do echo localhost; done\n'
    )
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)
    drop = (
        "RAY_ADDRESS",
        "RAY_AUTH_TOKEN",
        "JUDGE_BASE_URL",
        "JUDGE_MODEL",
        "TRAIN_NODES",
        "CUDA_VISIBLE_DEVICES",
    )
    return {
        **{k: v for k, v in os.environ.items() if k not in drop},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_JOB_ID": "42",
        "FAKE_NODES": "1",
        "PYTHON": sys.executable,
        "PRESET": "tiny",
        "GPUS_PER_NODE": "0",
        "JUDGE_NODES": "0",
        "RAY_PORT": str(free_port()),
        "JUDGE_PORT": str(free_port()),
        "OUTPUT_DIR": str(tmp_path / "run"),
        # A small object store, and a free port for the Ray Client server (its default, 10001, may be taken by
        # another Ray cluster on this machine).
        "RAY_START_ARGS": f"--object-store-memory=200000000 --ray-client-server-port={free_port()}",
    }


class Launch:
    """A launch script run in its own session; remembers every process that ever descended from it."""

    def __init__(self, script: str, env: dict, *args: str):
        self.proc = subprocess.Popen(
            ["bash", script, *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.seen: dict[int, tuple[psutil.Process, str]] = {}  # pid -> (process, its command line)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def _watch(self):
        while self.proc.poll() is None:
            try:
                for p in psutil.Process(self.proc.pid).children(recursive=True):
                    if p.pid not in self.seen:
                        self.seen[p.pid] = (p, _cmdline(p))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.3)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None and time.monotonic() < deadline, (
                f"no '{text}' in:\n{self.log[-3000:]}"
            )
            time.sleep(0.5)

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:  # a hung launcher: stop it, and whatever it started, before failing
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                for p, _ in self.seen.values():
                    if _alive(p):
                        p.kill()  # psutil checks that the pid still names the process seen

    def started(self, text: str) -> bool:
        return any(text in cmdline for _, cmdline in self.seen.values())

    def assert_nothing_left(self) -> None:
        assert self.started("ray.scripts.scripts start"), "Ray never started"
        deadline = time.monotonic() + 30
        while (alive := [p for p, _ in self.seen.values() if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive, [_cmdline(p)[:150] for p in alive]


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()) or p.name()
    except psutil.Error:
        return ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # a zombie holds nothing
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def scripted_judge():
    from open_instruct.testing.scripted_judge import Reply, ScriptedJudge

    with ScriptedJudge(lambda messages, n: Reply('{"INFERRED INSTRUCTION": "Write a poem."}')) as judge:
        yield judge


def test_sbatch_runs_the_trainer_on_a_two_node_cluster_and_passes_its_status(slurm_env, scripted_judge):
    """Ray head and one worker join (two 'nodes' on this machine), the judge answers, the real grpo_flip.sh
    starts; a flag it does not know ends it with status 2, which the job returns, leaving nothing running."""
    env = {
        **slurm_env,
        "FAKE_NODES": "2",
        "JUDGE_BASE_URL": scripted_judge.api_base,
        "JUDGE_MODEL": "hosted_vllm/scripted",
    }
    run = Launch("scripts/slurm/grpo_flip.sbatch", env, "--no_such_flag")
    rc = run.finish(timeout=300)
    assert rc == 2, run.log[-3000:]
    assert (
        "2 nodes, 0 GPUs for Ray" in run.log and "Ray cluster ready" in run.log and "judge ready" in run.log
    )
    assert "unknown flag(s): --no_such_flag" in run.log
    assert (Path(env["OUTPUT_DIR"]) / "cluster_logs" / "ray_head.log").exists()
    run.assert_nothing_left()


def test_sbatch_refuses_a_layout_the_allocation_does_not_hold(slurm_env):
    env = {**slurm_env, "FAKE_NODES": "2", "TRAIN_NODES": "3"}
    out = subprocess.run(
        ["bash", "scripts/slurm/grpo_flip.sbatch"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "the allocation has 2 nodes, the layout needs TRAIN_NODES + JUDGE_NODES = 3" in out.stderr


def test_sbatch_dry_run_checks_the_cluster_and_exits_zero(slurm_env, scripted_judge):
    env = {
        **slurm_env,
        "DRY_RUN": "1",
        "JUDGE_BASE_URL": scripted_judge.api_base,
        "JUDGE_MODEL": "hosted_vllm/scripted",
    }
    run = Launch("scripts/slurm/grpo_llmjudge.sbatch", env)
    rc = run.finish(timeout=300)
    assert rc == 0, run.log[-3000:]
    assert "dry run" in run.log and f"localhost:{env['RAY_PORT']}" in run.log
    assert not (Path(env["OUTPUT_DIR"]) / "metrics.jsonl").exists()  # nothing trained
    run.assert_nothing_left()


def test_sbatch_gives_the_second_node_to_the_judge_with_two_judge_nodes(slurm_env):
    """JUDGE_NODES=2 on 3 nodes: the second node runs `ray_node.sh judge` (in a dry run it serves nothing but
    joins Ray, where the leader counts it), the third a worker; failed before: JUDGE_NODES above 1 was refused.
    DRY_RUN=1 with the preset's judge: no node serves it (failed before: the head node started the judge with
    vLLM first); the trainer's dry run says what would be served and checks the rest."""
    temp = f"/tmp/ray-{os.getpid()}-{free_port()}"  # short: Ray's socket paths must fit in 107 characters
    env = {**slurm_env, "FAKE_NODES": "3", "JUDGE_NODES": "2", "DRY_RUN": "1", "FAKE_RAY_TEMP": temp}
    run = Launch("scripts/slurm/grpo_flip.sbatch", env)
    try:
        rc = run.finish(timeout=300)
    finally:
        for folder in Path("/tmp").glob(f"{Path(temp).name}-*"):
            shutil.rmtree(folder, ignore_errors=True)
    assert rc == 0, run.log[-3000:]
    assert "3 nodes, 0 GPUs for Ray" in run.log and "judge nodes localhost, workers localhost" in run.log
    logs = Path(env["OUTPUT_DIR"]) / "cluster_logs"
    assert "dry run, the judge is not served" in (logs / "judge_localhost_0.log").read_text()
    assert "dry run: the judge is not served" in run.log and "not started (dry run)" in run.log
    assert "serving judge" not in run.log and not (Path(env["OUTPUT_DIR"]) / "judge_server.out").exists()
    assert (logs / "worker_localhost_1.log").exists()
    run.assert_nothing_left()


def test_a_judge_that_never_answers_times_out_in_one_line(slurm_env):
    env = {
        **slurm_env,
        "JUDGE_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "JUDGE_MODEL": "hosted_vllm/x",
        "JUDGE_TIMEOUT": "3",
    }
    run = Launch(
        "scripts/cluster/ray_node.sh", {**env, "HEAD_HOST": "localhost", "TRAIN_NODES": "1"}, "leader"
    )
    rc = run.finish(timeout=120)
    assert rc == 1, run.log[-3000:]
    errors = [line for line in run.log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the judge at" in errors[0] and "not ready after 3 s" in errors[0], run.log
    run.assert_nothing_left()


def test_beaker_replicas_run_the_leader_and_a_worker(slurm_env, scripted_judge):
    """`ray_node.sh beaker` as two replicas of a Beaker task would run it: rank 0 leads, rank 1 joins it with
    the token from the workspace secret; when the run ends the worker sees the head gone and ends cleanly."""
    env = {
        **slurm_env,
        "TRAIN_NODES": "2",
        "JUDGE_BASE_URL": scripted_judge.api_base,
        "JUDGE_MODEL": "hosted_vllm/scripted",
        "BEAKER_LEADER_REPLICA_HOSTNAME": "localhost",
        "BEAKER_REPLICA_COUNT": "2",
        "RAY_AUTH_TOKEN": "0123456789abcdef" * 4,
        "RAY_gcs_rpc_server_reconnect_timeout_s": "5",
    }  # a worker notices a lost head in 5 s, not 60
    worker = Launch("scripts/cluster/ray_node.sh", {**env, "BEAKER_REPLICA_RANK": "1"}, "beaker")
    leader = Launch(
        "scripts/cluster/ray_node.sh", {**env, "BEAKER_REPLICA_RANK": "0"}, "beaker", "--no_such_flag"
    )
    assert leader.finish(timeout=300) == 2, leader.log[-3000:]
    assert "2 nodes" in leader.log and "Ray cluster ready" in leader.log
    assert worker.finish(timeout=120) == 0, worker.log[-3000:]
    assert "is gone; done" in worker.log
    leader.assert_nothing_left()
    worker.assert_nothing_left()


def test_sigterm_stops_every_step(slurm_env):
    """Cancelling the job (SIGTERM to the batch script) while it waits for a judge stops Ray and every step."""
    env = {
        **slurm_env,
        "FAKE_NODES": "2",
        "JUDGE_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "JUDGE_MODEL": "hosted_vllm/x",
    }
    run = Launch("scripts/slurm/grpo_flip.sbatch", env)
    run.wait_for("Ray cluster ready", timeout=180)
    os.kill(run.proc.pid, signal.SIGTERM)
    rc = run.finish(timeout=120)
    assert rc != 0
    run.assert_nothing_left()


def test_sbatch_serves_the_real_tiny_judge_and_a_preemption_saves_requeues_and_leaves_nothing(slurm_env):
    """The judge the preset names (the tiny one here), served by vLLM on every interface of the head node,
    answers the trainer's dry run through the head's name (DRY_RUN=first: a DRY_RUN=1 job serves no judge)
    and the run that follows. A preemption of the running job (Slurm's SIGTERM to the batch script) reaches
    the trainer through the leader: it saves the state of its last finished step and exits 75, the job asks
    to be requeued and returns 75, and the judge server, Ray and every other process are stopped. Failed
    before: the batch script exited 143 at once and the trainer was stopped without saving."""
    env = {**slurm_env, "DRY_RUN": "first", "JUDGE_TIMEOUT": "600"}
    flags = ["--total_episodes", "6400", "--checkpoint_state_freq", "0", "--local_eval_every", "0"]
    run = Launch("scripts/slurm/grpo_flip.sbatch", env, *flags)
    metrics = Path(env["OUTPUT_DIR"]) / "metrics.jsonl"
    deadline = time.monotonic() + 800
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        assert run.proc.poll() is None, run.log[-3000:]
        time.sleep(0.5)
    os.kill(run.proc.pid, signal.SIGTERM)
    rc = run.finish(timeout=300)
    assert rc == 75, run.log[-3000:]
    assert f"judge ready at http://localhost:{env['JUDGE_PORT']}/v1 (hosted_vllm/judge)" in run.log
    assert "(answered)" in run.log
    assert run.started("vllm.entrypoints.openai.api_server") and run.started("--host 0.0.0.0")
    from open_instruct.train_state import latest

    saved = latest(env["OUTPUT_DIR"])[1].step
    assert saved >= 1 and f"SIGTERM: the state of step {saved} is in" in run.log
    assert "requeueing job 42" in run.log
    assert (Path(env["OUTPUT_DIR"]) / "scontrol.log").read_text() == "requeue 42\n"
    run.assert_nothing_left()


def test_two_judge_nodes_serve_the_real_tiny_judge_and_the_trainer_uses_both(slurm_env):
    """JUDGE_NODES=2 as a cluster runs it, each node a process here with its own address: the head
    (127.0.0.1) and a judge node (127.0.0.2, so known to Ray) serve the preset's judge with vLLM, a worker
    trains. The leader finds the judge node through Ray and waits for both copies; the trainer's dry run hears
    from both, and its one-step run sends rewards to both. Then every node ends and nothing is left."""
    from open_instruct.testing.ray_cluster import node_ports

    common = {
        **slurm_env,
        "TRAIN_NODES": "1",
        "JUDGE_NODES": "2",
        "JUDGE_REPLICAS": "1",
        "DRY_RUN": "first",
        "JUDGE_TIMEOUT": "600",
        "RAY_TIMEOUT": "300",
        "HEAD_HOST": "127.0.0.1",
        "RAY_AUTH_TOKEN": "0123456789abcdef" * 4,
        "RAY_gcs_rpc_server_reconnect_timeout_s": "5",  # the other nodes notice the head's end in 5 s
    }

    def node(k: int, ip: str) -> dict:
        ports = " ".join(node_ports(k))
        return {**common, "JUDGE_HOST": ip, "RAY_START_ARGS": f"--node-ip-address={ip} {ports}"}

    # Nodes on one machine join Ray one at a time (two starting together could take the same socket names).
    judge_node = Launch("scripts/cluster/ray_node.sh", node(1, "127.0.0.2"), "judge")
    leader = Launch(
        "scripts/cluster/ray_node.sh",
        {**common, "JUDGE_HOST": "127.0.0.1"},
        "leader",
        *ONE_STEP,
    )
    judge_node.wait_for("Ray runtime started", timeout=300)
    worker = Launch("scripts/cluster/ray_node.sh", node(2, "127.0.0.3"), "worker")
    rc = leader.finish(timeout=700)
    assert rc == 0, leader.log[-3000:] + judge_node.log[-2000:] + worker.log[-2000:]
    port = common["JUDGE_PORT"]
    urls = f"http://127.0.0.1:{port}/v1,http://127.0.0.2:{port}/v1"
    assert f"judge ready at {urls} (hosted_vllm/judge)" in leader.log
    assert "(all 2 answered)" in leader.log and "trained 1 steps" in leader.log
    out = Path(common["OUTPUT_DIR"])
    for log in ("judge_server_head_0.log", f"judge_server_{os.uname().nodename}_0.log"):
        served = (out / log).read_text().count("POST /v1/chat/completions")
        assert served >= 5, (log, served)  # the dry run's one question, and rewards of the step
    for other in (judge_node, worker):
        assert other.finish(timeout=120) == 0, other.log[-3000:]
        assert "is gone; done" in other.log
        other.assert_nothing_left()
    leader.assert_nothing_left()
