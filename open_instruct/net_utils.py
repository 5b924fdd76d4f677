"""Addresses and ports (standard library only at import: benchmarks/learner_gpu.py runs where Ray is absent)."""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host` right now (the caller binds it next; a race is possible but rare)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rendezvous_address() -> tuple[str, int]:
    """This node's address as Ray knows it and a port free on it. Learner rank 0 calls it in its own actor and
    then hosts the learners' TCP store there (cluster.create_learners)."""
    import ray

    ip = ray.util.get_node_ip_address()
    return ip, free_port(ip)
