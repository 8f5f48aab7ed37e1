"""What a new `oblivio serve` finds of an earlier one: runs a killed serve left unfinished, and a
serve still running (flows/warm.py, api.Workspace.serve), on a real Prefect server."""
from __future__ import annotations

import json
import os

import pytest

from oblivio.errors import OblivioError


@pytest.fixture
def client(shared_prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: shared_prefect_server, PREFECT_LOGGING_TO_API_ENABLED: False}):
        with get_client(sync_client=True) as client:
            yield client


def test_a_new_serve_crashes_the_runs_a_killed_one_left_and_frees_the_deletion_slot(client, tmp_path):
    """A serve SIGKILLed mid-deletion left its run Running, holding the deployment's one
    concurrency slot: every later deletion waited for a slot forever, and `forget --wait` with it."""
    from prefect import flow
    from prefect.client.schemas.objects import StateType
    from prefect.states import Running

    from oblivio.flows.warm import WarmDeployment, WarmRuns

    @flow(name="oblivio-deletion-restart-test")
    def deletion(root: str) -> str:
        return root

    deployment_id = deletion.to_deployment(name="process-requests", parameters={"root": str(tmp_path)},
                                           concurrency_limit=1).apply()
    killed, later = (client.create_flow_run_from_deployment(deployment_id) for _ in range(2))
    assert WarmRuns._claim(client, killed)
    client.set_flow_run_state(killed.id, Running())
    assert not WarmRuns._claim(client, later)  # the slot is the killed run's

    runs = WarmRuns(tmp_path, [WarmDeployment(deployment_id, deletion, lock="process")])
    try:
        assert runs.crash_leftovers(client) == [str(killed.id)]
    finally:
        runs.doorbell.close()
    assert client.read_flow_run(killed.id).state.type == StateType.CRASHED
    assert WarmRuns._claim(client, later)  # the slot is free again
    assert client.read_flow_run(later.id).state.type == StateType.PENDING


def test_a_second_serve_of_a_workspace_is_refused_and_leaves_the_first_ones_state(shared_prefect_server, tmp_path):
    from oblivio.api import Workspace

    Workspace.init(tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    state = {"api_url": shared_prefect_server, "pid": os.getpid(), "wake_port": None, "deployments": {}}
    ws.layout.serve_state_path.write_text(json.dumps(state))
    with pytest.raises(OblivioError, match="already runs for this workspace"):
        ws.serve(port=4999)
    assert json.loads(ws.layout.serve_state_path.read_text()) == state


def test_a_stopping_serve_removes_only_its_own_state_file(tmp_path):
    from oblivio.flows.service import _remove_own_state

    other = tmp_path / "serve.json"
    other.write_text(json.dumps({"pid": os.getpid() + 1}))
    _remove_own_state(other)
    assert other.exists()
    other.write_text(json.dumps({"pid": os.getpid()}))
    _remove_own_state(other)
    assert not other.exists()
