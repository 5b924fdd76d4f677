"""One run per output directory. Two runs writing the same --output_dir would corrupt each other's state and
metrics, so the trainer takes OUTPUT_DIR/.run_lock before it writes anything: a file created only if absent
(O_EXCL, which is atomic on local filesystems and on NFS v3 or newer), holding the host, the pid, the
process's start time and the date. A second run is refused with one line naming the holder. A lock whose
process is gone (same host; the start time tells a reused pid apart) is taken over, with a line saying so;
on another host nobody can tell, so the line says which file to remove once that run is known to be over.
"""

import json
import os
import socket
import time
from pathlib import Path

from open_instruct.cli_utils import UserError


def _started(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


class RunLock:
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / ".run_lock"
        self.held = False

    def acquire(self, report=print) -> "RunLock":
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _started(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a stale lock removed, or a holder that let go, between two attempts
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:  # let go, or still being written by its holder
                    time.sleep(0.2)
                    continue
                if not self._stale(holder):
                    raise UserError(
                        f"{self.path.parent} is in use by another run (pid {holder.get('pid')} on "
                        f"{holder.get('host')}, since {holder.get('since')}): use another --output_dir, or "
                        f"remove {self.path} once that run is over"
                    ) from None
                report(
                    f"taking over {self.path}: its run (pid {holder.get('pid')} on this host, since "
                    f"{holder.get('since')}) is gone"
                )
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held, self._me = True, me
            return self
        raise UserError(
            f"could not take {self.path}: it keeps changing hands; is another run starting there?"
        )

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False  # another machine's process: cannot be checked from here
        started = _started(holder["pid"])
        return started is None or (holder.get("started") is not None and abs(started - holder["started"]) > 1)

    def release(self) -> None:
        """Remove the lock if it is still this run's."""
        if self.held and self._holder() == self._me:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
