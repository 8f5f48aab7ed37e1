"""One Prefect API for a command and all its worker processes.

With `PREFECT_API_URL` unset, Prefect starts a temporary server per *process*: a
process-pool or Dask worker would start its own (about 10 s each). Starting it here once
and exporting its address lets every worker report to the same server.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def prefect_api() -> Iterator[str]:
    """The configured server when `PREFECT_API_URL` is set, else one temporary local server."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pidfile = Path(os.environ.get("PREFECT_HOME", ".")) / "temporary-server.pid"
    _stop_orphan(pidfile)
    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
    pidfile.write_text(str(server.server_process.pid))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the last log lines reach the server before it stops
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
        pidfile.unlink(missing_ok=True)


def _stop_orphan(pidfile: Path) -> None:
    """A command killed with SIGKILL leaves its temporary server running on the same sqlite
    file; the next command would meet "database is locked". Stop it first."""
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"uvicorn" in cmdline or b"prefect" in cmdline:
            os.kill(pid, signal.SIGTERM)
    except (ValueError, OSError):
        pass
    pidfile.unlink(missing_ok=True)
