"""Deployments of one workspace.

- `oblivio-pipeline/scheduled`: the training pipeline on the cron of params.yaml;
- `oblivio-deletion/process-requests`: the deletion flow, run by an automation whenever
  `oblivio forget` announces a recorded request (a Prefect event).
The pipeline runs in subprocesses of `serve`; deletion runs in `serve` itself (flows/warm.py).
"""
from __future__ import annotations

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.deletion import deletion_pipeline
from flows.events import REQUEST_EVENT, workspace_resource
from flows.pipeline import training_pipeline


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
