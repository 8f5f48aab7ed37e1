"""OpenLineage run events out, for a data catalogue (Marquez, DataHub, OpenMetadata).

A catalogue cannot link an MLflow model to its training data from MLflow alone; these events
say which source and which DVC data version a registered model version came from, and which
erasure replaced it. One COMPLETE event per job (`ingest`, `train`, `evaluate-publish` after a
pipeline run, `erasure` after each deletion batch), sent once the flow has versioned the data
(the DVC hashes are known only then). The Prefect flow run is each event's parent run; the
flows layer passes its id in, so this module never imports Prefect.

Off by default (`openlineage.transport: none` in params.yaml). Events carry hashes and counts
only: request ids travel as SHA-256 digests, certificates by the digest of their signed file,
subject ids never. A receiver that fails costs a warning, not the run: an erasure is not
undone because a catalogue was down.
"""
from __future__ import annotations

import hashlib
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oblivio.step_results import Batch, Registered
from oblivio.workspace import WorkspaceDir

PRODUCER = "urn:oblivio"  # the spec wants a URI; the project has no public home to name
# `.invalid` never resolves: the facet's JSON Schema ships in docs/, not at an address
FACET_SCHEMA = "https://oblivio.invalid/spec/facets/1-0-0/OblivioRunFacet.json#/$defs/OblivioRunFacet"
SOURCE_NAMESPACE_BUILTIN = "oblivio-builtin"


def digest(text: str) -> str:
    """`sha256:…` of a text: how a request id appears in an event."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def emit_pipeline(root: Path, *, flow_run_id: str | None, flow_name: str, data: dict[str, str],
                  registered: Registered) -> int:
    """The pipeline run's three jobs: ingest (source → training data), train (data → shard
    weights), evaluate-publish (weights + holdout → registered model version). Events sent."""
    ws = WorkspaceDir(root)
    cfg = ws.params.openlineage
    if cfg.transport == "none":
        return 0
    shards, holdout, models = (_dvc_dataset(ws, path, data) for path in ("data/shards", "data/holdout.parquet",
                                                                         "models"))
    facets = {"flow_run_id": flow_run_id, "git_commit": _git_commit(ws.root)}
    events = [
        ("ingest", [_source_dataset(ws)], [shards, holdout], facets),
        ("train", [shards], [models], facets),
        ("evaluate-publish", [models, holdout], [_model_dataset(ws, registered.model_version)],
         {**facets, "model_version": registered.model_version, "mlflow_run_id": registered.run_id}),
    ]
    return _send(ws, flow_name, flow_run_id, events)


def emit_erasure(root: Path, *, flow_run_id: str | None, flow_name: str, batch: Batch, registered: Registered,
                 certificates: dict[str, str]) -> int:
    """One event for a deletion batch: training data before → training data after and the new
    model version, with the certificates' digests and the requests' hashed ids."""
    ws = WorkspaceDir(root)
    cfg = ws.params.openlineage
    if cfg.transport == "none":
        return 0
    before = _dataset("file", str(ws.shards_dir), batch.data_version_before)
    after = _dataset("file", str(ws.shards_dir), registered.dataset_version)
    facets = {"flow_run_id": flow_run_id, "git_commit": _git_commit(ws.root),
              "model_version": registered.model_version, "mlflow_run_id": registered.run_id,
              "request_id_hashes": sorted(digest(r) for r in batch.requests),
              "certificate_ids": sorted("sha256:" + hashlib.sha256(Path(p).read_bytes()).hexdigest()
                                        for p in certificates.values()),
              "records_removed": batch.records_removed}
    events = [("erasure", [before], [after, _model_dataset(ws, registered.model_version)], facets)]
    return _send(ws, flow_name, flow_run_id, events)


# --- datasets -------------------------------------------------------------------------

def _dataset(namespace: str, name: str, version: str | None) -> dict:
    return {"namespace": namespace, "name": name, "version": version}


def _dvc_dataset(ws: WorkspaceDir, path: str, hashes: dict[str, str]) -> dict:
    """A workspace output as DVC versions it: the file path, its DVC hash as the dataset version."""
    return _dataset("file", str(ws.root / path), hashes.get(path) or None)


def _source_dataset(ws: WorkspaceDir) -> dict:
    source = ws.params.data.source
    if source.startswith("builtin:"):
        return _dataset(SOURCE_NAMESPACE_BUILTIN, source.removeprefix("builtin:"), None)
    if "://" in source:
        scheme, rest = source.split("://", 1)
        bucket, _, key = rest.partition("/")
        return _dataset(f"{scheme}://{bucket}", key, None)
    return _dataset("file", str((ws.root / source).resolve()), None)


def _model_dataset(ws: WorkspaceDir, version: int) -> dict:
    """The registered model as a dataset of the tracking server; its version is the model version."""
    cfg = ws.mlflow
    return _dataset(cfg.registry_uri or cfg.tracking_uri, f"models:/{cfg.model_name}", str(version))


def _git_commit(root: Path) -> str:
    from oblivio.registry import git_commit

    return git_commit(root)


# --- events ---------------------------------------------------------------------------

def _send(ws: WorkspaceDir, flow_name: str, flow_run_id: str | None, events: list) -> int:
    """Build and emit each (job, inputs, outputs, run facet) event; a failure is a warning."""
    cfg = ws.params.openlineage
    try:
        client = _client(ws)
        built = [_event(ws, job, inputs, outputs, facets, flow_name, flow_run_id)
                 for job, inputs, outputs, facets in events]
        for event in built:
            client.emit(event)
        client.close(timeout=cfg.timeout_seconds)
        return len(built)
    except Exception as err:  # the catalogue's trouble, never the run's
        where = cfg.url if cfg.transport == "http" else str(ws.root / cfg.file)
        print(f"warning: OpenLineage events not sent to {where} ({cfg.transport}): {type(err).__name__}: "
              f"{str(err)[:300]}", file=sys.stderr, flush=True)
        return 0


def _client(ws: WorkspaceDir):
    import os

    from openlineage.client import OpenLineageClient

    cfg = ws.params.openlineage
    if cfg.transport == "http":
        transport: dict[str, Any] = {"type": "http", "url": cfg.url, "endpoint": cfg.endpoint,
                                     "timeout": cfg.timeout_seconds, "retry": {"total": 2}}
        if key := os.environ.get("OPENLINEAGE_API_KEY"):  # credentials from the environment, never params.yaml
            transport["auth"] = {"type": "api_key", "apiKey": key}
    else:
        path = ws.root / cfg.file
        path.parent.mkdir(parents=True, exist_ok=True)
        transport = {"type": "file", "log_file_path": str(path), "append": True}
    # the workspace's own commit is in the run facet; the client's guess from the working directory is not
    return OpenLineageClient(config={"transport": transport, "facets": {"source_code_location": {"disabled": True}}})


def _event(ws: WorkspaceDir, job: str, inputs: list[dict], outputs: list[dict], facets: dict, flow_name: str,
           flow_run_id: str | None):
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import (dataset_version_dataset, job_type_job, parent_run,
                                             processing_engine_run)
    from openlineage.client.uuid import generate_new_uuid

    from importlib.metadata import version

    def facets_of(d: dict) -> dict:
        return {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=d["version"],
                                                                              producer=PRODUCER)
                } if d["version"] else {}

    cfg = ws.params.openlineage
    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=version("oblivio"), name="oblivio", openlineageAdapterVersion=version("openlineage-python"),
            producer=PRODUCER),
        "oblivio": _oblivio_facet(facets),
    }
    if flow_run_id:  # the Prefect flow run that ran this job
        run_facets["parent"] = parent_run.ParentRunFacet(run=parent_run.Run(runId=str(flow_run_id)),
                                                         job=parent_run.Job(namespace=cfg.namespace, name=flow_name),
                                                         producer=PRODUCER)
    return RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=datetime.now(timezone.utc).isoformat(),
        run=Run(runId=str(generate_new_uuid()), facets=run_facets),
        job=Job(namespace=cfg.namespace, name=f"{ws.mlflow.model_name}.{job}",
                facets={"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="OBLIVIO",
                                                                 jobType="ERASURE" if job == "erasure" else "JOB",
                                                                 producer=PRODUCER)}),
        inputs=[InputDataset(namespace=d["namespace"], name=d["name"], facets=facets_of(d)) for d in inputs],
        outputs=[OutputDataset(namespace=d["namespace"], name=d["name"], facets=facets_of(d)) for d in outputs],
        producer=PRODUCER,
    )


def _oblivio_facet(values: dict):
    """Oblivio's custom run facet: the Prefect flow run, the workspace's git commit, and for an
    erasure the certificates and the requests (hashed)."""
    import attr
    from openlineage.client.generated.base import RunFacet

    @attr.define
    class OblivioRunFacet(RunFacet):
        flowRunId: str | None = attr.field(default=None)  # noqa: N815
        gitCommit: str = attr.field(default="")  # noqa: N815
        modelVersion: int | None = attr.field(default=None)  # noqa: N815
        mlflowRunId: str | None = attr.field(default=None)  # noqa: N815
        requestIdHashes: list[str] | None = attr.field(default=None)  # noqa: N815
        certificateIds: list[str] | None = attr.field(default=None)  # noqa: N815
        recordsRemoved: int | None = attr.field(default=None)  # noqa: N815

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA

    return OblivioRunFacet(flowRunId=values.get("flow_run_id"), gitCommit=values.get("git_commit", ""),
                           modelVersion=values.get("model_version"), mlflowRunId=values.get("mlflow_run_id"),
                           requestIdHashes=values.get("request_id_hashes"),
                           certificateIds=values.get("certificate_ids"),
                           recordsRemoved=values.get("records_removed"), producer=PRODUCER)
