"""Ports handed out below the kernel's ephemeral range, once per process; the learners' rendezvous port free
on every address of the node, as torch's TCP store listens on all of them."""

import socket

import pytest

from open_instruct import net_utils


@pytest.fixture
def held_port():
    """A port in free_port's range that another process holds on loopback only."""
    port = net_utils.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield port


def test_ports_are_below_the_ephemeral_range_and_handed_out_once():
    ports = [net_utils.free_port() for _ in range(20)]
    assert len(set(ports)) == 20 and all(24000 <= p < net_utils._ephemeral_low() for p in ports)


def test_the_rendezvous_port_is_free_on_every_address_of_the_node(held_port, monkeypatch):
    """A port held on loopback binds on the node's own address (127.0.0.2), yet torch's TCP store, which
    listens on every address, fails there with EADDRINUSE. Failed before: in CI a learner rank 0 of the
    simulated cluster's node 127.0.0.2 got such a port and the run stopped."""
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.2", held_port))  # what the old check tried: it succeeds
    other = net_utils.free_port()
    monkeypatch.setattr(net_utils, "_handed_out", set())  # the port holder is another process
    picks = iter([held_port, other])
    monkeypatch.setattr(net_utils.random, "randint", lambda low, high: next(picks))
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.2")
    assert net_utils.rendezvous_address() == ("127.0.0.2", other)
