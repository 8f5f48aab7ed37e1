"""One Prefect API for a command and all its worker processes.

With `PREFECT_API_URL` unset, Prefect starts a temporary server per *process*: a
process-pool or Dask worker would start its own (about 10 s each). Starting it here once
and exporting its address lets every worker report to the same server.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def prefect_api() -> Iterator[str]:
    """The configured server when `PREFECT_API_URL` is set, else one temporary local server."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the last log lines reach the server before it stops
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
