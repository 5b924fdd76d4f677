"""A real Ray cluster of several simulated nodes on one machine, for tests of the code that multi-GPU clusters
run. Lives here rather than in tests/conftest.py so that any test module can import it: pytest loads every
conftest.py under the module name `conftest`, so `from conftest import ...` finds whichever was loaded first."""

import os


def kill_tree(proc) -> None:
    """SIGKILL a process (a subprocess.Popen) and everything it started, its Ray cluster too, as a machine
    crash would; returns once all of them are gone."""
    import signal

    import psutil

    family = []
    for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
        try:
            os.kill(p.pid, signal.SIGKILL)
            family.append(p)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(family, timeout=30)


def node_ports(k: int) -> list[str]:
    """`ray start` flags giving node k ports of its own: nodes on one machine would collide on Ray's defaults."""
    from open_instruct.net_utils import free_port

    ports = {
        f"--{name}": free_port()
        for name in (
            "node-manager-port",
            "object-manager-port",
            "metrics-export-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
        )
    }
    low = 20_000 + 500 * k  # worker processes: a range of their own per node
    return [
        "--disable-usage-stats",
        f"--object-store-memory={200 * 2**20}",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + 499}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]


class SimulatedCluster:
    """A real Ray cluster of several nodes on this machine, for the code that multi-GPU clusters run. The
    head node declares no GPU (the driver joins there, like the Slurm launcher's judge node); each worker
    node has its own loopback address (127.0.0.2, 127.0.0.3, ...: all of 127.0.0.0/8 is this machine) and
    declares GPUs, which Ray schedules by while the actors run on the CPU (torch sees no CUDA, so learners
    use gloo). Every `ray start` runs in its own session and is stopped with everything it started."""

    def __init__(self, workers: list[tuple[str, int, int]], head_cpus: int = 4):
        """workers: (address, GPUs, CPUs) per worker node."""
        from open_instruct.net_utils import free_port

        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Without a token: Ray 2.60 turns token authentication on by itself when it finds ~/.ray/auth_token
        # (any earlier local cluster may have written one), and clients here would then need that token.
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "RAY_AUTH_MODE": "disabled",
        }
        self.ips = [ip for ip, _, _ in workers]
        self.procs: list = []
        self._start(
            [
                *(
                    f"--head --port={self.port} --num-gpus=0 --num-cpus={head_cpus} --include-dashboard=false"
                ).split(),
                *self._node_args(0),
            ]
        )
        self._wait(1)
        # One at a time: a node names its sockets after the ones it finds in the session directory, so two
        # nodes starting together could both take the same name.
        for k, (ip, gpus, cpus) in enumerate(workers, start=1):
            self._start(
                [
                    f"--address={self.address}",
                    f"--node-ip-address={ip}",
                    f"--num-gpus={gpus}",
                    f"--num-cpus={cpus}",
                    *self._node_args(k),
                ]
            )
            self._wait(1 + k)

    def _node_args(self, k: int) -> list[str]:
        return ["--block", *node_ports(k)]

    def _start(self, args: list[str]) -> None:
        import subprocess
        import sys
        from pathlib import Path

        ray = Path(sys.executable).with_name("ray")
        self.procs.append(
            subprocess.Popen(
                [str(ray), "start", *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=self.env,
            )
        )

    def _wait(self, nodes: int, timeout: float = 120) -> None:
        """Until `nodes` nodes are alive (asked from a separate process: this one may be a Ray driver)."""
        import subprocess
        import sys
        import time

        probe = (
            "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                [sys.executable, "-c", probe, self.address], capture_output=True, text=True, env=self.env
            )
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(nodes)]:
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the simulated Ray cluster did not reach {nodes} node(s) in {timeout:.0f}s")

    def stop(self) -> None:
        import signal

        import psutil

        family = []
        for p in self.procs:
            try:
                family += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for p in reversed(self.procs):  # workers first, the head last
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(family, timeout=5)  # Ray would drain for 30 s; nothing here needs it
        for p in alive:
            p.kill()
