"""A script's unguarded top level, run again inside a worker process: refused, with the fix.

Training workers start with `spawn`, which runs the parent's main module again (as `__mp_main__`)
before a worker can take work. A script calling Oblivio at its top level then ran a second
pipeline in each worker, recorded its requests again, and waited for ever on the workspace lock
its own parent held.
"""
from __future__ import annotations

import sys

from oblivio.errors import OblivioError


def refuse_reimported_main() -> None:
    """Raise when called (through any depth) from a main module a spawned process is re-running."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            raise OblivioError("This script calls Oblivio at its top level, and a worker process that Oblivio "
                               "started (with `spawn`) ran it again. Put the calls under "
                               "`if __name__ == \"__main__\":`.")
        frame = frame.f_back
