"""Addresses and ports (standard library only at import: benchmarks/learner_gpu.py runs where Ray is absent)."""

import random
import socket

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port the kernel hands to `bind(0)` and to outgoing connections (Linux: 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` right now, for the caller to bind next. Chosen below the kernel's
    ephemeral range (24000 up to it): a port from `bind(0)` could be taken, before the caller binds it, by any
    process that binds port 0 (vLLM, Ray and ZeroMQ open many), which a chosen port outside that range cannot.
    A port is handed out once per process."""
    low, high = 24000, _ephemeral_low() - 1
    for _ in range(200 if high > low else 0):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the ephemeral range: whatever the kernel gives
        s.bind((host, 0))
        return s.getsockname()[1]


def rendezvous_address() -> tuple[str, int]:
    """This node's address as Ray knows it and a port free on every address of the node. Learner rank 0 calls
    it in its own actor and then hosts the learners' TCP store there (cluster.create_learners); the store
    listens on all addresses, so a port some process holds on another one (loopback, say) would fail it
    with EADDRINUSE although it binds on the node's own address."""
    import ray

    return ray.util.get_node_ip_address(), free_port("0.0.0.0")
