"""One Prefect API for a command and all its worker processes.

With `PREFECT_API_URL` unset, Prefect starts a temporary server per *process*: a
process-pool or Dask worker would start its own (about 10 s each). Starting it here once
and exporting its address lets every worker report to the same server. It starts in a
background thread, so its boot overlaps the command's own imports.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


@contextmanager
def prefect_api() -> Iterator[Callable[[], str]]:
    """Yields `ready()`: call it before the first flow; it returns the API URL once it answers.

    The address is chosen first and exported before Prefect is imported: Prefect reads its
    settings once, at import, for every thread that does not inherit a settings context
    (its log and event workers); a thread that found no address would start a server of
    its own.
    """
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield lambda: configured
        return
    pidfile = Path(os.environ.get("PREFECT_HOME", ".")) / "temporary-server.pid"
    _stop_orphan(pidfile)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = url  # also inherited by worker processes
    started: dict = {}

    def boot() -> None:
        try:
            server = start_temporary_server(port)
            started["server"] = server
            pidfile.parent.mkdir(parents=True, exist_ok=True)
            pidfile.write_text(str(server.pid))
            timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
            if not wait_healthy(server, url, timeout=timeout):
                stop(server)
                raise RuntimeError(f"The temporary Prefect server did not answer within {timeout:.0f} s "
                                   f"(exit code {server.returncode}).")
        except BaseException as err:  # re-raised in the caller's thread by ready()
            started["error"] = err

    thread = threading.Thread(target=boot, name="prefect-server-boot", daemon=True)
    thread.start()
    with ExitStack() as stack:
        imported_before = "prefect.settings" in sys.modules

        def ready() -> str:
            thread.join()
            if "error" in started:
                raise started["error"]
            from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

            # no flow-run heartbeats: nothing watches a server that stops with this command, and the
            # engine waits out the heartbeat thread's sleep (up to a second) at the end of every flow
            updates = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
            if imported_before:  # settings were read without the address: give it to this context
                updates[PREFECT_API_URL] = url
            stack.enter_context(temporary_settings(updates=updates))
            return url

        try:
            yield ready
        finally:
            thread.join()
            if "prefect.logging.handlers" in sys.modules and "error" not in started:
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)  # the last log lines reach the server before it stops
            os.environ.pop("PREFECT_API_URL", None)
            if "server" in started:
                stop(started["server"])
            pidfile.unlink(missing_ok=True)


def start_temporary_server(port: int, *, environment: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """What Prefect's own temporary server runs (uvicorn over `create_app`: UI off, and only the
    services an ephemeral server needs, no scheduler), started without importing Prefect's server
    package here: that import alone is seconds of CPU taken from the command's own imports."""
    app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
    env = {**(os.environ if environment is None else environment), "PREFECT_UI_ENABLED": "0",
           "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
                             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "error", "--lifespan", "on"], env=env, **popen)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(api_url: str) -> bool:
    """Whether a Prefect API answers at `api_url`."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(server: subprocess.Popen, api_url: str, *, timeout: float) -> bool:
    """Poll until the server answers; False if it exited or `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while not healthy(api_url):
        if server.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(server: subprocess.Popen, *, timeout: float = 5) -> None:
    server.terminate()
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


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
