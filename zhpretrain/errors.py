"""The one error type users see, and how it is printed."""
import sys


class UserError(Exception):
    """Something the user can fix: a bad file, option or environment. Printed without a traceback."""


def report(error: BaseException) -> int:
    """Print a user-facing error as one paragraph on stderr (any secret it quotes redacted) and return the exit code."""
    from .secret import scrub

    print("\nerror: " + scrub(" ".join(str(error).split())) + "\n", file=sys.stderr, flush=True)
    return 2


def cli(main) -> None:
    """Run a command's main(): a UserError is one paragraph and exit code 2, a Ctrl-C exit code 130, never a traceback."""
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(report(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
