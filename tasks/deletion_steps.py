"""Tasks of the deletion flow; parameters and results hold request ids, hashes and counts only."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from oblivio import erasure
from oblivio.step_results import Applied, Batch, BatchOutcome, Finished


@task(name="plan-requests", cache_policy=NO_CACHE)
def plan(root: str) -> Batch:
    return erasure.plan(Path(root))


@task(name="apply-erasure", cache_policy=NO_CACHE)
def apply(root: str, batch: Batch) -> Applied:
    return erasure.apply(Path(root), batch)


@task(name="purge-and-certify", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def finish(root: str, outcome: BatchOutcome) -> Finished:
    from prefect.runtime import flow_run

    from oblivio.flows.history import purge_flow_runs

    running = flow_run.id
    return erasure.finish(Path(root), outcome, history=lambda: purge_flow_runs(root, keep=running))


@task(name="send-callbacks", cache_policy=NO_CACHE)
def send_callbacks(root: str) -> dict:
    """The batch's completion callbacks; a receiver's failure is retried later and never fails the flow."""
    from oblivio import callbacks
    from oblivio.workspace import WorkspaceDir

    report = callbacks.deliver_due(WorkspaceDir(Path(root)))
    return {"delivered": report.delivered, "retrying": report.retrying, "abandoned": report.abandoned}
