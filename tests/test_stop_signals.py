"""How the trainer's process takes SIGINT and SIGTERM (stop_signals.py), with real signals to this process."""

import os
import signal
import time

import pytest

from open_instruct.stop_signals import StopSignals


@pytest.fixture
def stop():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    handlers = StopSignals()
    handlers.install()
    yield handlers
    handlers.disarm()
    for s, h in saved.items():
        signal.signal(s, h)


def wait_for_signal(seconds: float = 2.0) -> None:
    """Python runs a signal's handler between bytecodes of the main thread: give it some."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def test_before_training_sigterm_stops_at_once(stop):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for_signal()
    assert not stop.requested.is_set()


def test_during_training_the_first_sigterm_asks_and_the_second_stops(stop, capsys):
    stop.arm(60)
    os.kill(os.getpid(), signal.SIGTERM)
    wait_for_signal(0.2)
    assert stop.requested.is_set()
    assert "SIGTERM: finishing the step in progress" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for_signal()


def test_a_grace_that_runs_out_interrupts_the_main_thread(stop, capsys):
    stop.arm(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        wait_for_signal(5)
    assert "grace ran out" in capsys.readouterr().err


def test_no_interrupt_once_the_trainer_has_stopped(stop):
    stop.arm(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
    wait_for_signal(0.05)
    stop.disarm()  # the trainer saved and left its loop before the grace ran out
    wait_for_signal(0.5)  # no KeyboardInterrupt


def test_ctrl_c_stops_at_once(stop):
    stop.arm(60)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        wait_for_signal()
