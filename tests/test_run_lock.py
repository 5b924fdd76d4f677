"""One run per output directory (run_lock.py): a second run is refused, a dead holder's lock is taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from open_instruct.cli_utils import UserError
from open_instruct.run_lock import RunLock


def test_a_second_run_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path):
        holder = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from open_instruct.run_lock import RunLock; RunLock({str(tmp_path)!r}).acquire()",
            ],
            capture_output=True,
            text=True,
        )
        assert holder.returncode != 0 and "is in use by another run" in holder.stderr
        with pytest.raises(
            UserError, match=rf"in use by another run \(pid {os.getpid()} on {socket.gethostname()}"
        ):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".run_lock").exists()  # released on exit
    RunLock(tmp_path).acquire().release()


def test_the_lock_of_a_process_that_is_gone_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = tmp_path / ".run_lock"
    lock.write_text(
        json.dumps({"host": socket.gethostname(), "pid": gone.pid, "started": 1.0, "since": "then"})
    )
    said = []
    RunLock(tmp_path).acquire(report=said.append)
    assert len(said) == 1 and "taking over" in said[0] and "is gone" in said[0]
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path):
    (tmp_path / ".run_lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": 12.0, "since": "long ago"})
    )
    said = []
    RunLock(tmp_path).acquire(report=said.append)  # our pid, but not our start time: that run is gone
    assert said and "taking over" in said[0]


def test_another_hosts_lock_is_never_taken_over(tmp_path):
    (tmp_path / ".run_lock").write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "since": "today"}))
    with pytest.raises(
        UserError, match="pid 1 on node-elsewhere, since today.*remove .*run_lock once that run is over"
    ):
        RunLock(tmp_path).acquire()
