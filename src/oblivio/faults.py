"""Named crash points, for the recovery tests: `OBLIVIO_CRASH_AT=<name>` SIGKILLs the process group there.

The kill is real (no exception, no cleanup, workers and the temporary Prefect server die
too), so the tests see exactly what a power cut at that step leaves behind.
"""
from __future__ import annotations

import os
import signal

CRASH_POINTS = ("train:checkpoint-saved", "erasure:applied", "erasure:purging")


def crash_point(name: str) -> None:
    if os.environ.get("OBLIVIO_CRASH_AT") == name:
        os.killpg(os.getpgid(0), signal.SIGKILL)
