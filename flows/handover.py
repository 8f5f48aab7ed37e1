"""Work handed to a running `oblivio serve`, and its outcome handed back; no Prefect import.

A cold command pays the imports of torch, Prefect and MLflow and a Prefect server's boot
before its flow starts; `serve` has paid them once. So `oblivio run`, with `serve` up, asks
serve's Prefect server (REST) for a flow run of the workspace's pipeline deployment and
waits; serve's warm executor (flows/warm.py) claims the run, executes it in its own process
and leaves the outcome in `.oblivio/runs/<flow run id>.json`: the flow's summary (counts,
hashes, metrics: what `run --json` prints) or the error that stopped it.
"""
from __future__ import annotations

import json
import os
import select
import socket
import urllib.request
from pathlib import Path

KEEP_OUTCOMES = 20  # the newest outcomes stay (a short history of served runs); a waiting command reads its own


def create_flow_run(api_url: str, deployment_id: str, parameters: dict) -> str:
    """A flow run of the deployment, scheduled now, with these parameters; returns its id."""
    body = json.dumps({"parameters": parameters, "tags": ["oblivio", "handover"]}).encode()
    request = urllib.request.Request(f"{api_url}/deployments/{deployment_id}/create_flow_run", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["id"]


def start_run(api_url: str, state: dict, deployment: str, parameters: dict) -> str | None:
    """A run of serve's `deployment` ("pipeline" or "deletion"), scheduled now, and serve woken to
    claim it; its id. None when serve's state file (`state`) names no such deployment: a serve
    from before runs were handed over."""
    deployment_id = state.get("deployments", {}).get(deployment)
    if deployment_id is None:
        return None
    flow_run = create_flow_run(api_url, deployment_id, parameters)
    ring(state.get("wake_port"))
    return flow_run


class Doorbell:
    """A loopback UDP port that `serve` waits on between polls: a command that has just created a
    run rings it, and the run is claimed at once instead of at the next poll, which can then be
    rare (an idle serve's polling is CPU on both ends). A ring carries nothing; anyone on the
    machine may ring, which costs one extra poll; a lost ring costs one poll interval."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]

    def wait(self, timeout: float) -> bool:
        """Up to `timeout` seconds for a ring; True if there was one (all pending rings are taken)."""
        ready, _, _ = select.select([self._socket], [], [], timeout)
        if not ready:
            return False
        while True:
            try:
                self._socket.recv(64)
            except BlockingIOError:
                return True

    def close(self) -> None:
        self._socket.close()


def ring(port: int | None) -> None:
    """Ring a `serve`'s doorbell (the `wake_port` of its state file); nothing if it has none."""
    if not port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"run", ("127.0.0.1", int(port)))
        except OSError:  # serve is gone: its next poll, or the caller's fallback, takes over
            pass


def flow_run_state(api_url: str, flow_run_id: str) -> tuple[str, str]:
    """(state type, state message) of a flow run, e.g. ("RUNNING", "")."""
    with urllib.request.urlopen(f"{api_url}/flow_runs/{flow_run_id}", timeout=10) as response:
        state = json.loads(response.read()).get("state") or {}
    return state.get("type", "PENDING"), state.get("message") or ""


def outcome_path(runs_dir: Path, flow_run_id: str) -> Path:
    return runs_dir / f"{flow_run_id}.json"


def write_outcome(runs_dir: Path, flow_run_id: str, outcome: dict) -> None:
    """Atomically, then drop all but the newest KEEP_OUTCOMES."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = outcome_path(runs_dir, flow_run_id)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(outcome, default=str))
    os.replace(tmp, path)
    for old in sorted(runs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-KEEP_OUTCOMES]:
        old.unlink(missing_ok=True)


def read_outcome(runs_dir: Path, flow_run_id: str) -> dict | None:
    path = outcome_path(runs_dir, flow_run_id)
    return json.loads(path.read_text()) if path.exists() else None


def error_outcome(err: BaseException) -> dict:
    """What a waiting command needs to raise the same error: its message, type and exit code."""
    return {"error": str(err), "error_type": type(err).__name__, "exit_code": getattr(err, "exit_code", None)}
