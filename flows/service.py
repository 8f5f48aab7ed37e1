"""`oblivio serve`: a Prefect server on loopback (unless one is configured) serving the deployments,
the HTTP deletion intake beside it, and a watch that raises an event for each overdue request."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oblivio.flows.prefect_api import healthy, stop, wait_healthy
from oblivio.errors import OblivioError


@contextmanager
def prefect_server(*, host: str, port: int, log_path: Path, timeout: float = 120) -> Iterator[str]:
    """`PREFECT_API_URL` when set; else a `prefect server start` on host:port until the block ends."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    api_url = f"http://{host}:{port}/api"
    if healthy(api_url):
        raise OblivioError(f"Something already answers on {host}:{port}. Set PREFECT_API_URL to use it, "
                           "or choose another --port.")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # its own process group: a Ctrl-C or `kill -TERM -PGID` reaches serve alone, whose clients
        # (runner, warm deletions, watch) then stop against a live server before it is stopped;
        # a dying server would leave each in the client's connection retries for about a minute
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host,
                                   "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
                                  process_group=0, preexec_fn=_die_with_parent)
    try:
        if not wait_healthy(server, api_url, timeout=timeout):
            raise OblivioError(f"The Prefect server did not start on {host}:{port}; see {log_path}.")
        yield api_url
    finally:
        stop(server, timeout=20)


def _die_with_parent() -> None:
    """In the server's child, before exec: SIGTERM when serve itself dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve_workspace(root: Path, *, n_shards: int, cron: str, timezone: str, host: str, port: int,
                    state_file: Path, log_path: Path, intake=None, ready=None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); deployments stay usable (not paused) afterwards.

    Both deployments' runs (the scheduled pipeline, `oblivio run` handed over, deletions)
    execute in this process, warm (flows/warm.py). `intake` (an IntakeServer) is started once
    the deployments exist, so a request it records is announced to them.
    """
    with prefect_server(host=host, port=port, log_path=log_path) as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from oblivio.flows.deletion import deletion_pipeline
        from oblivio.flows.deployments import workspace_deployments
        from oblivio.flows.runners import warm_task_runner
        from oblivio.flows.training import training_pipeline
        from oblivio.flows.warm import WarmDeployment, WarmRuns, warm_up
        from oblivio.workspace import WorkspaceDir

        ws = WorkspaceDir(root)
        executor = ws.params.executor
        with temporary_settings(updates={PREFECT_API_URL: api_url}), warm_task_runner(
                executor.kind, max_workers=executor.max_workers, dask_address=executor.dask_address) as pool:
            scheduled, deletion = workspace_deployments(str(root), n_shards=n_shards, cron=cron, timezone=timezone)
            pipeline_id, deletion_id = scheduled.apply(), deletion.apply()
            runs = WarmRuns(root, [
                WarmDeployment(pipeline_id, training_pipeline.with_options(task_runner=pool), lock="run",
                               keeps_outcome=True),
                WarmDeployment(deletion_id, deletion_pipeline.with_options(task_runner=pool), lock="process",
                               settles_requests=True)])
            warm_up(ws)
            runs.start()
            watch = RequestWatch(ws, api_url)
            watch.start()
            state = {"api_url": api_url, "pid": os.getpid(), "wake_port": runs.doorbell.port,
                     "deployments": {"pipeline": str(pipeline_id), "deletion": str(deletion_id)}}
            if intake is not None:
                from oblivio.http_intake import announcer

                intake.start(announcer(api_url, str(root)))
                state["intake_url"] = intake.url
            state_file.write_text(json.dumps(state))
            try:
                if ready:
                    ready(api_url, [f"{d.flow_name}/{d.name}" for d in (scheduled, deletion)],
                          state.get("intake_url", ""))
                _wait_until_stopped()
            finally:
                _remove_own_state(state_file)
                # every loop told first, then each joined: the server stops only after them
                runs.stopping.set()
                watch.stopping.set()
                if intake is not None:
                    intake.stop()
                watch.stop()
                runs.stop()


def _remove_own_state(state_file: Path) -> None:
    """serve.json goes with the serve that wrote it, never with another's."""
    try:
        if json.loads(state_file.read_text()).get("pid") == os.getpid():
            state_file.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


def _wait_until_stopped() -> None:
    """Block until Ctrl-C, or SIGTERM, which ends it the same way (a `systemctl stop`)."""
    import signal
    import time

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


class RequestWatch:
    """The ledger's clock in `serve`: completion callbacks due (every `tick` seconds: a receiver
    hears within seconds, and a failed send is retried on its backoff) and an
    `oblivio.request.overdue` event for each request newly past its due date (every `overdue_every`).

    Announced overdue ids are kept in `.oblivio/overdue-announced.json`, so a restart does not repeat them.
    """

    def __init__(self, ws, api_url: str, *, tick: float = 2.0, overdue_every: float = 60.0):
        import threading

        self.ws, self.api_url, self.tick, self.overdue_every = ws, api_url, tick, overdue_every
        self.path = ws.state_dir / "overdue-announced.json"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="oblivio-request-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)

    def check(self) -> list[str]:
        """One overdue pass; returns the ids announced now."""
        from oblivio import deadlines
        from oblivio.flows.events import announce_overdue
        from oblivio.ledger import Ledger

        seen = set(json.loads(self.path.read_text())) if self.path.exists() else set()
        days, at = self.ws.params.requests.deadline_days, deadlines.now()
        ledger = Ledger(self.ws.ledger_path)
        try:
            late = [r for r in ledger.list() if r.id not in seen and deadlines.is_overdue(r.status, r.created_at,
                                                                                        days, at)]
        finally:
            ledger.close()
        for r in late:
            announce_overdue(self.api_url, str(self.ws.root), r.id,
                             due=deadlines.due_at(r.created_at, days).isoformat(), status=r.status)
            seen.add(r.id)
        if late:
            self.path.write_text(json.dumps(sorted(seen)))
        return [r.id for r in late]

    def _loop(self) -> None:
        import time

        from oblivio import callbacks

        last_overdue = float("-inf")
        while not self.stopping.is_set():
            try:
                callbacks.deliver_due(self.ws)
                if time.monotonic() - last_overdue >= self.overdue_every:
                    last_overdue = time.monotonic()
                    self.check()
            except Exception as err:  # the server restarting must not end the watch
                print(f"oblivio serve: request watch: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            self.stopping.wait(self.tick)


def still_serving(state_file: Path, pid: int) -> bool:
    """Whether the serve (process `pid`) a command handed work to may still finish it. Told to stop,
    serve removes its state file at once but finishes the run it has: a command that took the
    missing file for a stopped serve redid a whole run, or found its request already settled and
    reported "nothing to do"."""
    if serving_api(state_file) is not None:
        return True
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def serving_api(state_file: Path) -> str | None:
    """The API of a running `oblivio serve` for this workspace, if there is one."""
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    try:
        os.kill(state["pid"], 0)
    except OSError:
        return None
    return state["api_url"] if healthy(state["api_url"]) else None
