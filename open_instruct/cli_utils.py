"""What every command shares: a user mistake is one line on stderr and exit status 2, never a traceback;
a run that had to stop (a judge outage, an actor that died, a wait past its timeout) is one line and exit
status 1; a run stopped by SIGTERM with its state saved (preempted, resumable) is one line and exit status 75;
Ctrl-C is exit status 130."""

import argparse
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in flags or input, worded for the user (name the file, row or flag)."""


class RunFailure(Exception):
    """The run could not go on, for a reason outside the user's input; worded for the user, with what to do."""


class Preempted(Exception):
    """The run stopped on SIGTERM with its state saved: rerunning the same command resumes (exit status 75)."""


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure, worth running again


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """An error's message as one line for a one-line error: its first line, whitespace folded, cut at `limit`
    characters (tracebacks and long server answers stay out); the exception's type when it has no message."""
    lines = str(error).strip().splitlines()
    text = (
        " ".join(lines[0].split())
        if lines
        else (type(error).__name__ if isinstance(error, BaseException) else "")
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_command(body: Callable[[], int]) -> int:
    try:
        return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def parse_bool(text: str) -> bool:
    """A flag's true/false value, as the published scripts write it (`True`, `false`, `1`, ...)."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
