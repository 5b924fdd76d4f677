"""Wait until part of a cluster launch is ready, or say in one line why not and exit 1.

    python scripts/cluster/wait_ready.py port HOST PORT --timeout S           # something listens there
    python scripts/cluster/wait_ready.py ray HOST:PORT --nodes N --gpus G --timeout S
    python scripts/cluster/wait_ready.py judge URL[,URL...] --timeout S       # each URL/models answers 200
    python scripts/cluster/wait_ready.py judge_nodes HOST:PORT --count N --timeout S
        # N judge nodes (ray_node.sh judge) are in Ray: prints their addresses, one a line

--watch PID (repeatable) gives up at once when such a process (a server being waited for) has exited, and
--log PATH names the file to read in the error. Used by scripts/cluster/ray_node.sh.
"""

import argparse
import os
import socket
import sys
import time
import urllib.error
import urllib.request


class NotReady(Exception):
    """One line saying what is missing."""


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A child that exited but was not reaped yet is a zombie: gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def poll(check, what: str, timeout: float, watch: list[int], log: str | None, interval: float = 2.0):
    """Call check() until it returns None (ready) or the deadline; check returns what is still missing."""
    see = f"; see {log}" if log else ""
    start = time.monotonic()
    reported = start
    while True:
        if not all(alive(pid) for pid in watch):
            raise NotReady(f"{what} exited before it was ready{see}")
        missing = check()
        if missing is None:
            return
        now = time.monotonic()
        if now - start >= timeout:
            raise NotReady(f"{what} not ready after {timeout:g} s: {missing}{see}")
        if now - reported >= 30:  # a line now and then, so a long wait does not look like a hang
            print(f"waiting for {what}: {missing}", flush=True)
            reported = now
        time.sleep(interval)


def wait_port(host: str, port: int, timeout: float, watch: list[int], log: str | None) -> None:
    poll(
        lambda: None if port_open(host, port) else f"nothing listens on {host}:{port}",
        f"{host}:{port}",
        timeout,
        watch,
        log,
    )


def join_ray(address: str, timeout: float, watch: list[int], log: str | None) -> None:
    import ray

    host, port = address.rsplit(":", 1)
    wait_port(host, int(port), timeout, watch, log)  # ray.init would otherwise hang on a head not yet up
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # e.g. a token that does not match the head's: one line, not a traceback
        raise NotReady(f"could not join the Ray cluster at {address}: {str(e).splitlines()[0]}") from e


def wait_ray(address: str, nodes: int, gpus: int, timeout: float, watch: list[int], log: str | None) -> None:
    import ray

    start = time.monotonic()
    join_ray(address, timeout, watch, log)
    try:

        def missing() -> str | None:
            alive_nodes = sum(n["Alive"] for n in ray.nodes())
            have = int(ray.cluster_resources().get("GPU", 0))
            if alive_nodes >= nodes and have >= gpus:
                return None
            return f"{alive_nodes} of {nodes} nodes and {have} of {gpus} GPUs have joined"

        left = max(timeout - (time.monotonic() - start), 1)
        poll(missing, f"the Ray cluster at {address}", left, watch, log)
    finally:
        ray.shutdown()


def judge_nodes(address: str, count: int, timeout: float, log: str | None) -> list[str]:
    """The addresses of the nodes that joined Ray as judge nodes, once there are `count` of them."""
    import ray

    start = time.monotonic()
    join_ray(address, timeout, [], log)
    try:

        def hosts() -> list[str]:
            return sorted(
                n["NodeManagerAddress"]
                for n in ray.nodes()
                if n["Alive"] and "flip_judge_node" in n["Resources"]
            )

        left = max(timeout - (time.monotonic() - start), 1)
        poll(lambda: None if len(hosts()) >= count else f"{len(hosts())} of {count} judge nodes have joined",
             f"the judge nodes in Ray at {address}", left, [], log)  # fmt: skip
        return hosts()
    finally:
        ray.shutdown()


def wait_judge(urls: str, timeout: float, watch: list[int], log: str | None) -> None:
    """Every api base in the comma-separated `urls` lists its models."""

    def missing() -> str | None:
        down = []
        for url in urls.split(","):
            try:
                with urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=5) as r:
                    if r.status != 200:
                        down.append(f"{url}/models answered {r.status}")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                down.append(f"{url}/models: {getattr(e, 'reason', e)}")
        return "; ".join(down) or None

    poll(missing, f"the judge at {urls}", timeout, watch, log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    port = sub.add_parser("port", help="a TCP port accepts connections")
    port.add_argument("host")
    port.add_argument("port", type=int)
    ray = sub.add_parser("ray", help="a Ray cluster has its nodes and GPUs")
    ray.add_argument("address", help="HOST:PORT of the Ray head")
    ray.add_argument("--nodes", type=int, required=True, help="nodes that must be alive")
    ray.add_argument("--gpus", type=int, required=True, help="GPUs the cluster must show")
    judge = sub.add_parser("judge", help="OpenAI-compatible servers list their models")
    judge.add_argument("url", help="api bases, comma-separated, e.g. http://host:8000/v1,http://host:8001/v1")
    nodes = sub.add_parser("judge_nodes", help="judge nodes have joined Ray: print their addresses")
    nodes.add_argument("address", help="HOST:PORT of the Ray head")
    nodes.add_argument("--count", type=int, required=True, help="judge nodes that must have joined")
    for s in (port, ray, judge, nodes):
        s.add_argument("--timeout", type=float, required=True, help="seconds")
        s.add_argument(
            "--watch", type=int, action="append", default=[], help="stop waiting when this process has exited"
        )
        s.add_argument("--log", default=None, help="log file to name in the error")
    args = p.parse_args(argv)
    try:
        if args.what == "port":
            wait_port(args.host, args.port, args.timeout, args.watch, args.log)
        elif args.what == "ray":
            wait_ray(args.address, args.nodes, args.gpus, args.timeout, args.watch, args.log)
        elif args.what == "judge_nodes":
            print("\n".join(judge_nodes(args.address, args.count, args.timeout, args.log)))
        else:
            wait_judge(args.url, args.timeout, args.watch, args.log)
    except NotReady as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
