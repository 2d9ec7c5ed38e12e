"""The base of every error a user can fix (bad config, missing model, unreadable input).
The CLI prints these as one line and exits 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class MidiforgeError(Exception):
    """An error whose message tells the user what to change."""


def run_reporting_errors(call: Callable[[], int], prog: str = "midiforge") -> int:
    """`call()`'s exit status. A user's mistake, a MidiforgeError or the file system or an
    object store refusing (OSError: a missing or unwritable path, bad credentials), is
    one line on stderr and status 2; anything else is a bug and keeps its traceback."""
    try:
        return call()
    except (MidiforgeError, OSError) as e:
        # An OSError made from a bare path (pyarrow's "not found") says nothing else.
        bare = isinstance(e, OSError) and e.strerror is None
        print(f"{prog}: error: {f'{type(e).__name__}: ' if bare else ''}{e}", file=sys.stderr)
        return 2
