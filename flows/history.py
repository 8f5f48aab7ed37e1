"""Prefect's copy of a workspace's history: the flow runs (parameters, states, task runs, logs)
of the runs an erasure made obsolete.

Prefect persists no result of ours (every task is `NO_CACHE`, results are not persisted),
but its database keeps each flow run's parameters, states and log lines for as long as the
server lives. An erasure removes the workspace's earlier, finished flow runs from it, as
`dvc gc -w` removes earlier data versions: what trained on the erased data goes.
"""
from __future__ import annotations

FLOWS = ("oblivio-pipeline", "oblivio-deletion")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
BULK = 50  # the most flow runs the server deletes in one request


def purge_flow_runs(root: str, *, keep: str | None) -> int:
    """Delete this workspace's finished flow runs other than `keep` (the running erasure)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)

    mine, offset = [], 0
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=list(FLOWS))),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(FINAL)))),
                limit=200, offset=offset)
            mine += [str(r.id) for r in runs if (r.parameters or {}).get("root") == root and str(r.id) != keep]
            if len(runs) < 200:
                break
            offset += len(runs)
        for start in range(0, len(mine), BULK):
            _delete(client, mine[start:start + BULK])
    return len(mine)


def _delete(client, ids: list[str]) -> None:
    """One request, one transaction for the lot. Deleted one by one, each run's logs are deleted
    by a background job of the server that, on SQLite, holds the write lock the next delete
    needs: the server answers 503 and the client waits 2 s before it retries."""
    import httpx

    try:
        client.request("POST", "/flow_runs/bulk_delete", json={"flow_runs": {"id": {"any_": ids}}, "limit": len(ids)})
    except httpx.HTTPStatusError as err:
        if err.response.status_code not in (404, 405):  # a server from before bulk deletion: one by one
            raise
        from prefect.exceptions import ObjectNotFound

        for run_id in ids:  # the server deletes its task runs and states, and its logs soon after
            try:
                client.delete_flow_run(run_id)
            except ObjectNotFound:
                pass
