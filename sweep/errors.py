"""The one error class for bad user input, in a module of its own.

`python -m sweep.launch` runs sweep/launch.py as `__main__`: a class defined there would be another
class than the one the driver's modules import from `sweep.launch`, and an error they raise would
escape `main()` as a traceback. Every command line catches this class, prints its message as one
line and exits 2.
"""

from __future__ import annotations

import sys

USAGE_EXIT = 2


class UsageError(ValueError):
    """Bad input, found before any compute; the message says what was wrong and how to fix it."""


def report_usage_error(err: Exception) -> int:
    """Print `err` as one line (`error: ...`) on stderr; returns the exit status for bad input."""
    print("error: " + " ".join(str(err).split()), file=sys.stderr)
    return USAGE_EXIT
