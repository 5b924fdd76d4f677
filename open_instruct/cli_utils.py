"""What every command shares: a user mistake is one line on stderr and exit status 2, never a traceback;
Ctrl-C is exit status 130."""

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in flags or input, worded for the user (name the file, row or flag)."""


def run_command(body: Callable[[], int]) -> int:
    try:
        return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
