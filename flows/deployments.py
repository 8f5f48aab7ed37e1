"""Deployments of one workspace.

- `oblivio-pipeline/scheduled`: the training pipeline on the cron of params.yaml;
- `oblivio-deletion/process-requests`: the deletion flow, run by an automation whenever
  `oblivio forget` announces a recorded request (a Prefect event).
`serve` runs both in its own process, warm (flows/warm.py).
`deploy_to_work_pool` puts the scheduled pipeline on a process work pool instead, for a `prefect worker`.
"""
from __future__ import annotations

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from oblivio.flows.deletion import deletion_pipeline
from oblivio.flows.events import REQUEST_EVENT, workspace_resource
from oblivio.flows.training import training_pipeline


def workspace_deployments(root: str, *, n_shards: int, cron: str, timezone: str) -> list:
    scheduled = training_pipeline.to_deployment(
        name="scheduled", schedules=[Cron(cron, timezone=timezone)],
        parameters={"root": root, "n_shards": n_shards, "trigger": "schedule"},
        description="Ingest, validate, version, train, audit, register, promote.", tags=["oblivio"])
    deletion = deletion_pipeline.to_deployment(
        name="process-requests", parameters={"root": root, "n_shards": n_shards, "trigger": "event"},
        triggers=[DeploymentEventTrigger(expect={REQUEST_EVENT},
                                         match={"prefect.resource.id": workspace_resource(root)})],
        concurrency_limit=1,
        description="Apply every pending deletion request in one batch.", tags=["oblivio"])
    return [scheduled, deletion]


def deploy_to_work_pool(root: str, *, n_shards: int, cron: str, timezone: str, work_pool: str) -> dict:
    """The scheduled pipeline as a deployment of a process work pool: a `prefect worker` on that
    pool runs it in a subprocess of its own (the other way is `oblivio serve`, in-process).

    The code is pulled from this installation's directory; the worker must run on a machine
    that has it (and the workspace) at the same path. One deployment per workspace.
    """
    import contextlib
    import hashlib
    import sys
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent  # the directory that holds flows/
    name = f"scheduled-{Path(root).name}-{hashlib.sha256(root.encode()).hexdigest()[:8]}"
    remote = training_pipeline.from_source(source=str(source), entrypoint="flows/training.py:training_pipeline")
    with contextlib.redirect_stdout(sys.stderr):  # Prefect prints a table; stdout is the command's (--json)
        deployment_id = remote.deploy(
            name=name, work_pool_name=work_pool, schedules=[Cron(cron, timezone=timezone)],
            parameters={"root": root, "n_shards": n_shards, "trigger": "schedule"},
            description="Ingest, validate, version, train, audit, register, promote.", tags=["oblivio"],
            build=False, push=False, print_next_steps=False, ignore_warnings=True)
    return {"deployment": f"{training_pipeline.name}/{name}", "deployment_id": str(deployment_id),
            "work_pool": work_pool}
