"""Deployments of one workspace, and the event that wakes the deletion processor.

- `oblivio-pipeline/scheduled`: the training pipeline on the cron of params.yaml;
- `oblivio-deletion/process-requests`: the deletion flow, run by an automation whenever
  `oblivio forget` announces a recorded request (a Prefect event).
Flows run in subprocesses of `serve`, with the workspace's environment.
"""
from __future__ import annotations

import hashlib

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.deletion import deletion_pipeline
from flows.pipeline import training_pipeline

REQUEST_EVENT = "oblivio.request.recorded"


def workspace_resource(root: str) -> str:
    """A stable resource id for the workspace (its path hashed: paths can name people too)."""
    return f"oblivio.workspace.{hashlib.sha256(root.encode()).hexdigest()[:16]}"


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


def announce_request(root: str, request_id: str) -> None:
    """Tell a serving Prefect server that a request was recorded (request id only, no personal data)."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    emit_event(REQUEST_EVENT, resource={"prefect.resource.id": workspace_resource(root)},
               payload={"request_id": request_id})
    EventsWorker.drain_all(timeout=10)
