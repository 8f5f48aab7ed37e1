"""Named fault points, for the recovery tests.

`OBLIVIO_CRASH_AT=<name>` SIGKILLs the process group there. The kill is real (no exception,
no cleanup, workers and the temporary Prefect server die too), so the tests see exactly
what a power cut at that step leaves behind.

`OBLIVIO_HOLD_AT=<name>` with `OBLIVIO_HOLD_FILE=<path>` makes the process create the file
there and wait until the test deletes it: meanwhile the test breaks a backend (kills the
tracking server, cuts the S3 endpoint), and the process goes on against the broken one.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CRASH_POINTS = ("train:checkpoint-saved", "erasure:applied", "erasure:purging", "registry:registered")
HOLD_TIMEOUT_S = 300


def crash_point(name: str) -> None:
    if os.environ.get("OBLIVIO_CRASH_AT") == name:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    if os.environ.get("OBLIVIO_HOLD_AT") == name and os.environ.get("OBLIVIO_HOLD_FILE"):
        hold = Path(os.environ.pop("OBLIVIO_HOLD_FILE"))  # once per process: a task's retry goes on
        hold.write_text(name)
        deadline = time.monotonic() + HOLD_TIMEOUT_S
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
