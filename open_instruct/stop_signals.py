"""How the trainer stops when asked to.

Ctrl-C (SIGINT) stops at once. SIGTERM is how schedulers ask a job to stop: Slurm before a time limit or a
preemption (`--signal`), Kubernetes and Beaker on preemption, a user's `scancel`. Once training has started,
the first SIGTERM lets the step in progress finish, saves the full state of the last finished step (a step
still waiting for its rollouts is dropped: its prompts are drawn again on resume) and exits with status 75,
"preempted, resumable" (EX_TEMPFAIL): rerunning the same command resumes. The trainer has
`--preemption_grace_s` for all of it; when the grace runs out, or at a second SIGTERM, it stops at once, and
since a state is written atomically, the newest complete state on disk is still the previous one.
Before training starts (loading, placing actors) there is nothing to save, and SIGTERM stops at once.
"""

import signal
import sys
import threading


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class StopSignals:
    """The process's SIGINT and SIGTERM handlers, and whether a stop was asked for."""

    def __init__(self):
        self.requested = threading.Event()
        self.grace_s: float | None = None

    def install(self) -> None:
        """Installed again after ray.init, whose own SIGTERM handler would abort; SIGINT is set explicitly
        because a shell starts background jobs with it ignored."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, _interrupt)

    def arm(self, grace_s: float) -> None:
        """From now on there is state worth saving: the first SIGTERM asks for a stop instead of stopping."""
        self.grace_s = grace_s

    def disarm(self) -> None:
        self.grace_s = None

    def _on_term(self, signum, frame) -> None:
        if self.grace_s is None or self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()
        print(
            f"SIGTERM: finishing the step in progress, saving the state and stopping within "
            f"{self.grace_s:g}s (a second SIGTERM stops at once)",
            file=sys.stderr,
            flush=True,
        )
        timer = threading.Timer(self.grace_s, self._grace_over, args=(threading.main_thread().ident,))
        timer.daemon = True
        timer.start()

    def _grace_over(self, main_thread: int) -> None:
        if self.grace_s is None:  # the trainer already stopped
            return
        print(f"the {self.grace_s:g}s grace ran out: stopping now", file=sys.stderr, flush=True)
        self.grace_s = None
        signal.pthread_kill(main_thread, signal.SIGINT)  # raises KeyboardInterrupt in the main thread


STOP = StopSignals()
