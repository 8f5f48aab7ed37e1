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


def purge_flow_runs(root: str, *, keep: str | None) -> int:
    """Delete this workspace's finished flow runs other than `keep` (the running erasure)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)

    deleted, offset = 0, 0
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=list(FLOWS))),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(FINAL)))),
                limit=200, offset=offset)
            mine = [r for r in runs if (r.parameters or {}).get("root") == root and str(r.id) != keep]
            for run in mine:  # the server deletes its task runs and states, and its logs soon after
                client.delete_flow_run(run.id)
            deleted += len(mine)
            if len(runs) < 200:
                return deleted
            offset += len(runs) - len(mine)
