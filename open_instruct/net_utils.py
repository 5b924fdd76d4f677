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


def free_port() -> int:
    """A port nothing listens on at any address of this machine right now, for the caller to bind next (on
    one address or on all: a server that listens on every address, as torch's TCP store does, fails where
    another process holds the port on loopback alone). Chosen below the kernel's ephemeral range (24000 up
    to it): a port from `bind(0)` could be taken, before the caller binds it, by any process that binds port
    0 (vLLM, Ray and ZeroMQ open many), which a chosen port outside that range cannot. A port is handed out
    once per process."""
    low, high = 24000, _ephemeral_low() - 1
    for _ in range(200 if high > low else 0):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # conflicts with a holder on any one address
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the ephemeral range: whatever the kernel gives
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def rendezvous_address() -> tuple[str, int]:
    """This node's address as Ray knows it and a port free on every address of the node (free_port). Learner
    rank 0 calls it in its own actor and then hosts the learners' TCP store there (cluster.create_learners);
    the store listens on all addresses."""
    import ray

    return ray.util.get_node_ip_address(), free_port()
