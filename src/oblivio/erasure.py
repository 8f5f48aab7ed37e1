"""Erasure requests: resolve, remove, purge, certify.

The flow is: `plan` resolves every actionable request against the placed data (which
shards, which first slice) and rejects what cannot be honoured; `apply` writes
tombstones and rewrites only the affected partitions; the ordinary training steps then
retrain exactly the shards whose slice commitments changed; `finish` purges every
remaining copy and writes one certificate per request.

Every step is idempotent, so a crash anywhere is repaired by running it again: the
tombstones are written before any file changes, and a partition is rewritten by
dropping tombstoned keys, which is a no-op the second time.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from oblivio import lineage, signing, tracking
from oblivio.data.columns import RECORD_KEY, SHARD, SLICE, SUBJECT_KEY
from oblivio.data.sharding import DatasetWriter, Spill, rewrite_partition, shard_path
from oblivio.faults import crash_point
from oblivio.intake import unknown_ids
from oblivio.keys import record_key, subject_key
from oblivio.ledger import Ledger, Request
from oblivio.step_results import (
    Applied, Batch, BatchOutcome, Finished, Purged, Rejection, Resolution,
)
from oblivio.workspace import WorkspaceDir

HOLDOUT = -1  # the shard index placement uses for held-out rows


def placement(ws: WorkspaceDir) -> pd.DataFrame:
    """Keys, shard and slice of every placed row (holdout rows get shard -1), no features."""
    cols = [SUBJECT_KEY, RECORD_KEY, SHARD, SLICE]
    frames = [pq.read_table(p, columns=cols).to_pandas() for p in sorted(ws.shards_dir.glob("shard=*/part.parquet"))]
    if ws.holdout_path.exists():
        held = pq.read_table(ws.holdout_path, columns=[SUBJECT_KEY, RECORD_KEY]).to_pandas()
        frames.append(held.assign(**{SHARD: HOLDOUT, SLICE: -1}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def _hits(rows: pd.DataFrame, req: Request) -> pd.DataFrame:
    return rows[rows[SUBJECT_KEY].isin(req.subject_hashes) | rows[RECORD_KEY].isin(req.record_hashes)]


def plan(root: Path, *, kinds: tuple[str, ...] = ("erasure", "corrective")) -> Batch:
    """Resolve every actionable request; reject the ones that cannot be honoured.

    The batch holds accepted request ids, per shard the first affected slice, and counts:
    hashes and counts only.
    """
    ws = WorkspaceDir(root)
    ledger = Ledger(ws.ledger_path)
    try:
        rows = placement(ws)
        erased = (ledger.tombstones(), ledger.record_tombstones())
        shards = ws.params.sisa.shards
        sizes = rows[rows[SHARD] >= 0].groupby(SHARD).size().reindex(range(shards), fill_value=0)
        accepted, rejected, per_request = [], [], {}
        before = None
        removed = pd.Series(False, index=rows.index)
        for req in ledger.actionable():
            if req.kind not in kinds:
                continue
            hits = _hits(rows, req)  # an id is placed iff it is in a row this request hits
            problem = unknown_ids(set(hits[SUBJECT_KEY].tolist()), set(hits[RECORD_KEY].tolist()), req, erased)
            if problem is None and req.kind == "corrective" and not (hits[SHARD] >= 0).any() \
                    and ledger.certificate(req.id) is None:
                problem = ("none of the flagged records is in the training data (held-out rows only): "
                           "there is nothing to correct; use --kind erasure to delete them")
            if problem is None:
                trial = removed | rows.index.isin(hits.index)
                left = rows[~trial & (rows[SHARD] >= 0)].groupby(SHARD).size().reindex(range(shards), fill_value=0)
                emptied = [int(k) for k in range(shards) if sizes[k] > 0 and left[k] == 0]
                if emptied:
                    problem = (f"it would remove every record of shard(s) {emptied}; a shard cannot be emptied "
                               "by a request (retrain with fewer shards, or erase in smaller requests)")
            if problem:
                ledger.mark_rejected(req.id, reason=problem)
                rejected.append(Rejection(req.id, problem))
                continue
            removed |= rows.index.isin(hits.index)
            accepted.append(req.id)
            earlier = ledger.certificate(req.id)  # a retry: the rows are gone, the resolution was kept
            if earlier and "resolution" in earlier:
                per_request[req.id] = Resolution.from_dict(earlier["resolution"])
                before = before or earlier["data_version_before"]
                continue
            train_hits = hits[hits[SHARD] >= 0]
            per_request[req.id] = Resolution(
                records=int(len(hits)), holdout_records=int((hits[SHARD] == HOLDOUT).sum()),
                shards=sorted(int(k) for k in train_hits[SHARD].unique()),
                first_slices={str(int(k)): int(g[SLICE].min()) for k, g in train_hits.groupby(SHARD)},
            )
        hit_rows = rows[removed & (rows[SHARD] >= 0)]
        return Batch(
            requests=accepted, rejected=rejected, per_request=per_request,
            first_slice={str(int(k)): int(g[SLICE].min()) for k, g in hit_rows.groupby(SHARD)},
            holdout_affected=bool((removed & (rows[SHARD] == HOLDOUT)).any()),
            route="+".join(sorted({ledger.get(i).kind for i in accepted})) or "none",
            records_removed=sum(r.records for r in per_request.values()),
            data_version_before=before or lineage.dataset_version(ws.root),
        )
    finally:
        ledger.close()


def apply(root: Path, batch: Batch) -> Applied:
    """Tombstone the batch's subjects and records, then drop them from every affected file."""
    ws = WorkspaceDir(root)
    ledger = Ledger(ws.ledger_path)
    try:
        for request_id in batch.requests:
            req = ledger.get(request_id)
            if ledger.certificate(req.id) is None:  # what it resolved to, kept for a retry after a crash
                ledger.save_certificate(req.id, {"resolution": batch.per_request[req.id].to_dict(),
                                                 "data_version_before": batch.data_version_before})
            ledger.add_tombstones(req.subject_hashes, request_id=req.id)
            ledger.add_record_tombstones(req.record_hashes, request_id=req.id)
        erased = (ledger.tombstones(), ledger.record_tombstones())
    finally:
        ledger.close()
    files = [(k, shard_path(ws.shards_dir, k)) for k in range(ws.params.sisa.shards)]
    files.append((HOLDOUT, ws.holdout_path))
    rewritten, removed = [], []
    for k, path in files:
        if not path.exists():
            continue
        if not _erased_rows(pq.read_table(path, columns=[SUBJECT_KEY, RECORD_KEY]).to_pandas(), erased).any():
            continue  # the key columns alone show the partition is untouched
        frame = pq.read_table(path).to_pandas()
        removed.append(frame[_erased_rows(frame, erased)])
        rewritten.append(k)
    if removed:  # quarantined for the forget-set audit, deleted by `purge`
        ws.quarantine_dir.mkdir(parents=True, exist_ok=True)
        quarantine = pd.concat(removed, ignore_index=True)
        _keep_corrective_evidence(ws, batch, quarantine)
        pq.write_table(pa.Table.from_pandas(quarantine, preserve_index=False),
                       ws.quarantine_dir / f"batch-{len(list(ws.quarantine_dir.glob('*.parquet')))}.parquet")
    for k, path in files:  # read again: holding every affected partition would hold a big batch's whole table
        if k in rewritten:
            frame = pq.read_table(path).to_pandas()
            rewrite_partition(path, frame[~_erased_rows(frame, erased)].reset_index(drop=True))
    result = Applied(partitions_rewritten=rewritten, source_rewritten=_erase_from_source(ws, erased))
    crash_point("erasure:applied")
    return result


def _erased_rows(rows: pd.DataFrame, erased: tuple[frozenset[str], frozenset[str]]) -> pd.Series:
    """Which rows belong to an erased subject or are an erased record."""
    return rows[SUBJECT_KEY].isin(erased[0]) | rows[RECORD_KEY].isin(erased[1])


def _keep_corrective_evidence(ws: WorkspaceDir, batch: Batch, rows: pd.DataFrame) -> None:
    """Corrective requests keep their flagged rows: SSD needs them at every later publish."""
    from oblivio.unlearning.corrective import store_flagged

    ledger = Ledger(ws.ledger_path)
    try:
        for request_id in batch.requests:
            req = ledger.get(request_id)
            if req.kind == "corrective":
                mine = rows[rows[SUBJECT_KEY].isin(req.subject_hashes) | rows[RECORD_KEY].isin(req.record_hashes)]
                store_flagged(ws.corrections_dir, req.id, mine.drop(columns=[SHARD, SLICE], errors="ignore"))
    finally:
        ledger.close()


def _erase_from_source(ws: WorkspaceDir, erased: tuple[frozenset[str], frozenset[str]]) -> bool:
    """A source file kept *inside* the workspace is a copy too: drop the erased rows from it.

    Built-in sources and files outside the workspace are upstream systems; tombstones
    keep their rows out of every later ingest, and the certificate says so.
    """
    source = ws.params.data.source
    path = (ws.root / source).resolve()
    if source.startswith("builtin:") or not path.is_relative_to(ws.root) or not path.exists():
        return False
    cols = ws.params.data.columns
    frame = pq.read_table(path).to_pandas() if path.suffix == ".parquet" else pd.read_csv(path)
    subjects = frame[cols.subject_id].astype(str).map(lambda s: subject_key(ws.secret, s))
    records = frame[cols.record_id].astype(str).map(lambda r: record_key(ws.secret, r))
    gone = subjects.isin(erased[0]) | records.isin(erased[1])
    if not gone.any():
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    keep = frame[~gone]
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pandas(keep, preserve_index=False), tmp)
    else:
        keep.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return True


# --- purge --------------------------------------------------------------------------

def purge(root: Path, *, keep_version: int, request_ids: list[str],
          history: Callable[[], int] | None = None) -> Purged:
    """Remove every copy the erased records may still have in the workspace.

    - slice checkpoints not on the current chains (the baseline's included);
    - model versions not trained on the current data version: deleted from the registry,
      their runs and logged models deleted and garbage-collected (artifacts included),
      with a tombstone tag on the registered model saying why;
    - DVC cache and remote objects the workspace no longer references (`dvc gc -w -c`);
    - the quarantined rows kept for the forget-set audit, and any ingest spill or staging a crash left;
    - Prefect result storage (nothing is cached there by design; anything found goes), and,
      through `history` (flows/history.py: the core does not talk to Prefect), the
      workspace's earlier flow runs on the Prefect server.
    """
    from oblivio.training.sisa import CheckpointStore

    ws = WorkspaceDir(root)
    manifest = json.loads(ws.manifest_path.read_text())
    store = CheckpointStore(ws.checkpoints_dir)
    keep = {store.path(s["shard"], key) for s in manifest["shards"] for key in s["chain"]}
    removed_checkpoints = store.remove_all_but(keep)
    crash_point("erasure:purging")
    versions = _purge_model_versions(ws, keep_version=keep_version, request_ids=request_ids)
    lineage.garbage_collect(ws.root)
    for leftover in (ws.prefect_home / "storage", ws.quarantine_dir):
        if leftover.exists():
            shutil.rmtree(leftover)
    Spill.sweep(ws.state_dir)
    DatasetWriter.sweep(ws.shards_dir.parent)
    return Purged(checkpoints_removed=len(removed_checkpoints), model_versions_deleted=versions,
                  flow_runs_deleted=history() if history is not None else None)


def _purge_model_versions(ws: WorkspaceDir, *, keep_version: int, request_ids: list[str]) -> list[int]:
    """Delete versions and runs not trained on the current data version, then `mlflow gc`."""
    cfg = ws.mlflow
    client = tracking.client(cfg)
    current = lineage.dataset_version(ws.root)
    stale = [mv for mv in client.search_model_versions(f"name='{cfg.model_name}'")
             if int(mv.version) != keep_version and mv.tags.get("oblivio.dataset_version") != current]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for mv in stale:
        client.set_registered_model_tag(
            cfg.model_name, f"oblivio.purged.v{mv.version}",
            f"deleted {when}: trained on data erased by {', '.join(request_ids)}")
        client.delete_model_version(cfg.model_name, mv.version)
        if model_id := tracking.logged_model_id(mv):  # its files are the logged model's, not the version's
            client.delete_logged_model(model_id)
    experiment = client.get_experiment_by_name(cfg.experiment)
    stale_runs = client.search_runs([experiment.experiment_id], f"tags.`oblivio.dataset_version` != '{current}'")
    for run in stale_runs:
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        for r in [run, *children]:
            client.delete_run(r.info.run_id)
    if stale or stale_runs:
        _mlflow_gc(cfg)
    return sorted(int(mv.version) for mv in stale)


def _mlflow_gc(cfg) -> None:
    """`mlflow gc`, in-process: deleted runs and logged models lose their artifacts for good.

    Against a tracking server, gc hard-deletes the rows in the server's database
    (`gc_backend_store_uri`) and the artifacts through the server's artifact proxy (the
    tracking URI): it removes every run and logged model in the `deleted` stage there.
    """
    from mlflow.cli import gc

    from oblivio.errors import IntegrityError

    store = cfg.gc_backend_store_uri or cfg.tracking_uri
    if cfg.remote and not cfg.gc_backend_store_uri:
        raise IntegrityError("mlflow.yaml names a tracking server but no gc_backend_store_uri (its database): "
                             "`mlflow gc` cannot hard-delete erased runs through the server's REST API. Add it "
                             "(`oblivio init --profile production --mlflow-database ...` writes it).")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking_uri  # gc resolves artifact locations through it
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gc.main(["--backend-store-uri", store, "--tracking-uri", cfg.tracking_uri], standalone_mode=False)
    except Exception as err:
        raise IntegrityError(f"`mlflow gc` failed; erased data may remain in MLflow artifacts: {err}") from err
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


# --- certificates ---------------------------------------------------------------------

def certificate(ws: WorkspaceDir, req: Request, outcome: BatchOutcome, purged: Purged) -> dict:
    """What an auditor needs to check the request was honoured, with hashes only (the signed JSON document)."""
    mine = outcome.batch.per_request.get(req.id, Resolution())
    registered = outcome.registered
    retrained = {s["index"]: s for s in outcome.shards if s["slices_trained"]}
    manifest = json.loads(ws.manifest_path.read_text())
    source = ws.params.data.source
    return {
        "request_id": req.id, "kind": req.kind, "reason": req.reason, "submitted_at": req.created_at,
        "certified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "subject_hashes": list(req.subject_hashes), "record_hashes": list(req.record_hashes),
        "route": ("exact: retrain affected shards from the first affected slice"
                  + ("; corrective: every shard model dampened with the flagged records (SSD), standing"
                     if req.kind == "corrective" else "")),
        "corrections": {str(s["index"]): [c for c in s.get("corrections", []) if c["request_id"] == req.id]
                        for s in manifest["shards"]} if req.kind == "corrective" else {},
        "records_removed": mine.records, "holdout_records_removed": mine.holdout_records,
        "data_version_before": outcome.batch.data_version_before, "data_version_after": registered.dataset_version,
        "shards_affected": mine.shards,
        "slices_retrained": {str(k): s["slices_trained"] for k, s in retrained.items()},
        "retrained_weights_sha256": {str(k): s["weights_sha256"] for k, s in retrained.items()},
        "model_version": registered.model_version, "promoted": outcome.promotion.promoted,
        "promotion": outcome.promotion.decision,
        "recipe_sha256": manifest["recipe_sha256"],
        # what a replay needs besides the data and checkpoints: these kernels and library versions
        "numerics": manifest["recipe"].get("numerics"),
        "commitments": {str(s["index"]): s["commitments"] for s in manifest["shards"]},
        "purge": purged.to_dict(),
        "files_rewritten": outcome.applied.to_dict(),
        "upstream": ("the source is outside the workspace: its owner must erase it there; tombstones keep it "
                     "out of every later ingest") if (source.startswith("builtin:")
                                                     or not (ws.root / source).resolve().is_relative_to(ws.root))
        else "the source file inside the workspace was rewritten without the erased rows",
    }


def finish(root: Path, outcome: BatchOutcome, *, history: Callable[[], int] | None = None) -> Finished:
    """Mark the batch applied, purge, certify each request, then mark it promoted (if it was)."""
    ws = WorkspaceDir(root)
    ledger = Ledger(ws.ledger_path)
    try:
        ids, version = outcome.batch.requests, outcome.registered.model_version
        result = {"model_version": version, "decision": outcome.promotion.decision}
        ledger.mark_applied(ids, outcome=result)
        purged = purge(ws.root, keep_version=version, request_ids=ids, history=history)
        ws.certificates_dir.mkdir(exist_ok=True)
        paths = {}
        for request_id in ids:
            cert = signing.sign(certificate(ws, ledger.get(request_id), outcome, purged), ws.signing_key)
            path = ws.certificates_dir / f"{request_id}.json"
            path.write_text(json.dumps(cert, indent=1, sort_keys=True))
            ledger.save_certificate(request_id, cert)
            paths[request_id] = str(path)
        tracking.attach_files(ws.mlflow, outcome.registered.run_id, [*paths.values(), str(ws.public_key_path)],
                              "certificates")
        if outcome.promotion.promoted:
            ledger.mark_promoted(ids, outcome=result)
        return Finished(certificates=paths, purge=purged)
    finally:
        ledger.close()


def record_failure(ws: WorkspaceDir, err: BaseException) -> None:
    """A batch that failed: its unapplied requests become `failed`, its applied ones keep their
    status with the error (a purge that did not finish); the next run retries both."""
    ledger = Ledger(ws.ledger_path)
    error = f"{type(err).__name__}: {str(err)[:500]}"
    try:
        actionable = ledger.actionable()
        pending = [r.id for r in actionable if r.status != "applied"]
        if pending:
            ledger.mark_failed(pending, error=error)
        applied = [r.id for r in actionable if r.status == "applied"]
        if applied:
            ledger.note_error(applied, error=error)
    finally:
        ledger.close()

