"""The one error type users see, and how it is printed."""
import sys
import textwrap


class UserError(Exception):
    """Something the user can fix: a bad file, option or environment. Printed without a traceback."""


def report(error: BaseException) -> int:
    """Print a user-facing error as one wrapped paragraph on stderr and return the exit code."""
    text = " ".join(str(error).split())
    print("\n" + textwrap.fill(f"error: {text}", width=100) + "\n", file=sys.stderr, flush=True)
    return 2
