"""An erasure's purge of Prefect's copy of the workspace's history (flows/history.py), on a real server."""
from __future__ import annotations

import pytest

from oblivio.flows.history import purge_flow_runs


@pytest.fixture
def api(shared_prefect_server):
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    # no log shipping: its worker would still be flushing to the shared server after that has stopped
    with temporary_settings(updates={PREFECT_API_URL: shared_prefect_server, PREFECT_LOGGING_TO_API_ENABLED: False}):
        yield


def _runs_of(root: str) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sorted(str(r.id) for r in client.read_flow_runs(limit=200) if (r.parameters or {}).get("root") == root)


def test_a_purge_deletes_the_workspaces_finished_runs_but_the_running_one_in_one_request(api, tmp_path, monkeypatch):
    """Deleted one at a time, each run's log deletion (a background job of the server) held SQLite's
    write lock the next delete needed: a 503, then the client's 2 s back-off, per run."""
    from prefect import flow
    from prefect.client.orchestration import SyncPrefectClient

    @flow(name="oblivio-deletion")
    def deletion(root: str, n_shards: int = 1) -> str:
        return root

    mine, other = str(tmp_path / "ws"), str(tmp_path / "other-ws")
    for root in (mine, mine, mine, other):
        deletion(root)
    running, *_ = _runs_of(mine)
    monkeypatch.setattr(SyncPrefectClient, "delete_flow_run", lambda self, run_id: pytest.fail("one by one"))
    assert purge_flow_runs(mine, keep=running) == 2
    assert _runs_of(mine) == [running]
    assert len(_runs_of(other)) == 1
    assert purge_flow_runs(mine, keep=running) == 0
