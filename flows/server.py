"""One Prefect API for a command and all its worker processes.

With `PREFECT_API_URL` unset, Prefect starts a temporary server per *process*: a
process-pool or Dask worker would start its own (about 10 s each). Starting it here once
and exporting its address lets every worker report to the same server. It starts in a
background thread, so its boot overlaps the command's own imports.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


@contextmanager
def prefect_api() -> Iterator[Callable[[], str]]:
    """Yields `ready()`: call it before the first flow; it returns the API URL once it answers."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield lambda: configured
        return
    pidfile = Path(os.environ.get("PREFECT_HOME", ".")) / "temporary-server.pid"
    _stop_orphan(pidfile)
    started: dict = {}

    def boot() -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()
            started["server"] = server
            server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
            pidfile.parent.mkdir(parents=True, exist_ok=True)
            pidfile.write_text(str(server.server_process.pid))
        except BaseException as err:  # re-raised in the caller's thread by ready()
            started["error"] = err

    thread = threading.Thread(target=boot, name="prefect-server-boot", daemon=True)
    thread.start()
    with ExitStack() as stack:

        def ready() -> str:
            thread.join()
            if "error" in started:
                raise started["error"]
            url = started["server"].api_url
            if os.environ.get("PREFECT_API_URL") != url:
                from prefect.settings import PREFECT_API_URL, temporary_settings

                os.environ["PREFECT_API_URL"] = url  # inherited by worker processes
                stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
            return url

        try:
            yield ready
        finally:
            thread.join()
            if "server" in started:
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)  # the last log lines reach the server before it stops
                os.environ.pop("PREFECT_API_URL", None)
                started["server"].stop()
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
