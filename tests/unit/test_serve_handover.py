"""Handing work to a running `oblivio serve`: the API's side, with the serving process faked at its
REST boundary (the real hand-over runs in tests/integration/test_operations.py)."""
from __future__ import annotations

import json
import os

import pytest

from oblivio import Workspace
from oblivio.errors import OblivioError
from oblivio.flows import events, handover, service

API = "http://127.0.0.1:9/api"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A fresh workspace whose `serve` appears to be running, with both deployments registered."""
    Workspace.init(tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    ws.layout.serve_state_path.write_text(json.dumps(
        {"api_url": API, "pid": 1, "deployments": {"pipeline": "dep-pipeline", "deletion": "dep-deletion"}}))
    monkeypatch.setattr(service, "serving_api", lambda state_file: API)
    return ws


def _settled_at_once(monkeypatch):
    from oblivio import intake

    monkeypatch.setattr(intake, "settled", lambda ws, request_id: {
        "request_ids": [request_id], "status": "promoted", "promoted": True, "records_removed": 1})


def test_forget_wait_starts_one_deletion_run_and_posts_no_event(served, monkeypatch):
    """The waiting command asks serve's deletion deployment for a run itself; an event as well
    would have the automation queue a second, empty run behind it."""
    announced, created = [], []
    monkeypatch.setattr(events, "announce_request", lambda api, root, request_id: announced.append(request_id))
    monkeypatch.setattr(handover, "create_flow_run",
                        lambda api, deployment, parameters: created.append((deployment, parameters)) or "run-1")
    _settled_at_once(monkeypatch)
    result = served.forget(subjects=["42"], wait=True)
    assert result.details["processed_by"] == "serve"
    assert announced == []
    assert created == [("dep-deletion", {"root": str(served.root), "n_shards": served.layout.params.sisa.shards,
                                         "trigger": "forget"})]


def test_forget_wait_announces_to_a_serve_without_deployment_ids(served, monkeypatch):
    """A `serve` started by an older version wrote no deployment ids: the event reaches its automation."""
    served.layout.serve_state_path.write_text(json.dumps({"api_url": API, "pid": 1}))
    announced = []
    monkeypatch.setattr(events, "announce_request", lambda api, root, request_id: announced.append(request_id))
    monkeypatch.setattr(handover, "create_flow_run", lambda *args: pytest.fail("no deployment id to run"))
    _settled_at_once(monkeypatch)
    result = served.forget(subjects=["42"], wait=True)
    assert result.details["processed_by"] == "serve"
    assert announced == result.request_ids


def test_run_is_handed_to_serve_and_returns_its_summary(served, monkeypatch):
    created = {}

    def create_flow_run(api_url, deployment_id, parameters):  # serve claims the run and leaves its outcome
        created.update(api=api_url, deployment=deployment_id, parameters=parameters)
        handover.write_outcome(served.layout.runs_dir, "run-1", {"summary": {
            "model_version": 3, "promoted": True, "slices_trained": 2, "steps": {"train": 1.0}, "seconds": 4.0}})
        return "run-1"

    monkeypatch.setattr(handover, "create_flow_run", create_flow_run)
    result = served.run(from_scratch=True)
    assert created == {"api": API, "deployment": "dep-pipeline", "parameters": {
        "root": str(served.root), "n_shards": served.layout.params.sisa.shards, "baseline": None,
        "from_scratch": True, "reslice": False, "trigger": "manual", "defer_intervals": True}}
    assert (result.model_version, result.promoted, result.slices_trained) == (3, True, 2)
    assert result.details["processed_by"] == "serve" and result.details["flow_seconds"] == 4.0
    assert result.model_name == served.layout.mlflow.model_name


def test_an_error_in_the_served_run_is_raised_here_with_its_exit_code(served, monkeypatch):
    from oblivio.errors import DataError

    def failing(api_url, deployment_id, parameters):
        try:
            raise DataError("column 'age' holds text; declare it categorical")
        except DataError as err:
            handover.write_outcome(served.layout.runs_dir, "run-2", handover.error_outcome(err))
        return "run-2"

    monkeypatch.setattr(handover, "create_flow_run", failing)
    with pytest.raises(OblivioError, match="column 'age' holds text") as raised:
        served.run()
    assert raised.value.exit_code == DataError.exit_code


def test_choosing_an_executor_keeps_the_run_here(served, monkeypatch):
    """`run --executor …` asks for this process's runner: nothing is handed over."""
    monkeypatch.setattr(handover, "create_flow_run", lambda *a: pytest.fail("handed over"))
    monkeypatch.setattr(Workspace, "_run_in_serve", lambda self, options: pytest.fail("handed over"))
    from oblivio.flows import prefect_api

    class Stop(Exception):
        pass

    def no_server():
        raise Stop

    monkeypatch.setattr(prefect_api, "prefect_api", no_server)
    with pytest.raises(Stop):
        served.run(executor="sequential")


def test_only_the_newest_outcomes_are_kept(tmp_path):
    for i in range(handover.KEEP_OUTCOMES + 5):
        handover.write_outcome(tmp_path, f"run-{i:02d}", {"summary": {"i": i}})
        os.utime(tmp_path / f"run-{i:02d}.json", (1000 + i, 1000 + i))  # one second apart
    kept = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert kept == [f"run-{i:02d}" for i in range(5, handover.KEEP_OUTCOMES + 5)]
    assert handover.read_outcome(tmp_path, "run-24") == {"summary": {"i": 24}}
    assert handover.read_outcome(tmp_path, "run-00") is None


def test_a_ring_wakes_the_doorbell_once_and_silence_times_out():
    doorbell = handover.Doorbell()
    try:
        assert doorbell.wait(0.01) is False
        handover.ring(doorbell.port)
        handover.ring(doorbell.port)
        assert doorbell.wait(5) is True
        assert doorbell.wait(0.01) is False, "both rings were taken by the one wake-up"
    finally:
        doorbell.close()
    handover.ring(doorbell.port)  # serve gone: nothing raised
    handover.ring(None)  # a serve from before the doorbell


@pytest.mark.parametrize("command", ["forget", "run"])
def test_a_command_rings_serve_after_creating_its_run(served, monkeypatch, command):
    """The run exists before the ring, so the woken serve finds it in the poll the ring starts."""
    doorbell = handover.Doorbell()
    state = json.loads(served.layout.serve_state_path.read_text())
    served.layout.serve_state_path.write_text(json.dumps({**state, "wake_port": doorbell.port}))
    rung_after_creation = []

    def create_flow_run(api_url, deployment_id, parameters):
        handover.write_outcome(served.layout.runs_dir, "run-3", {"summary": {
            "model_version": 3, "promoted": True, "slices_trained": 2, "steps": {}, "seconds": 1.0}})
        rung_after_creation.append(doorbell.wait(0.01))
        return "run-3"

    monkeypatch.setattr(handover, "create_flow_run", create_flow_run)
    _settled_at_once(monkeypatch)
    try:
        served.forget(subjects=["42"], wait=True) if command == "forget" else served.run()
        assert rung_after_creation == [False]
        assert doorbell.wait(5) is True
    finally:
        doorbell.close()


@pytest.mark.parametrize("command", ["run", "forget"])
def test_a_serve_told_to_stop_mid_run_is_waited_for_not_redone(served, monkeypatch, command):
    """SIGTERM makes serve remove its state file at once and finish the run it has. The waiting
    command took the missing file for a stopped serve: `run` redid the whole run (two versions),
    `forget --wait` found its request settled and printed "nothing to do"."""
    import subprocess
    import threading

    from oblivio import intake

    stopping = subprocess.Popen(["sleep", "30"])  # serve's process, finishing its run
    served.layout.serve_state_path.write_text(json.dumps(
        {"api_url": API, "pid": stopping.pid, "deployments": {"pipeline": "dep-pipeline", "deletion": "dep-deletion"}}))
    monkeypatch.setattr(service, "serving_api", lambda state_file: API if state_file.exists() else None)
    done = threading.Event()

    def told_to_stop(api_url, deployment_id, parameters):
        served.layout.serve_state_path.unlink()
        threading.Timer(3.0, lambda: (handover.write_outcome(served.layout.runs_dir, "run-9", {"summary": {
            "model_version": 4, "promoted": True, "slices_trained": 1, "seconds": 3.0}}), done.set())).start()
        return "run-9"

    real_settled = intake.settled
    monkeypatch.setattr(intake, "settled", lambda ws, request_id: {
        "request_ids": [request_id], "status": "promoted", "promoted": True, "records_removed": 1}
        if done.is_set() else real_settled(ws, request_id))
    monkeypatch.setattr(handover, "create_flow_run", told_to_stop)
    monkeypatch.setattr(handover, "flow_run_state", lambda api_url, flow_run: ("RUNNING", ""))
    monkeypatch.setattr(Workspace, "_process", lambda self, *a, **k: pytest.fail("redone here"), raising=False)
    from oblivio.flows import prefect_api
    monkeypatch.setattr(prefect_api, "prefect_api", lambda: pytest.fail("redone here"))
    try:
        if command == "run":
            result = served.run()
            assert result.model_version == 4
        else:
            result = served.forget(subjects=["42"], wait=True)
            assert result.status == "promoted"
        assert result.details["processed_by"] == "serve"
    finally:
        stopping.kill()
        stopping.wait()
