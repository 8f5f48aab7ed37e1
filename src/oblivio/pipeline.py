"""The pipeline's steps as plain functions over a workspace.

Each step takes a workspace root (a path: steps run in worker processes too) and returns
a small JSON-able summary: counts, hashes and paths, never rows, so nothing personal
ends up in Prefect's result storage. The Prefect flow and the `oblivio stage` commands
(dvc.yaml) call these same functions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from oblivio import numerics
from oblivio.audit.membership import headline, membership_audit, score_members
from oblivio.data.columns import RECORD_KEY, SLICE, SUBJECT_KEY
from oblivio.data.encoding import Encoder, check_values, resolve
from oblivio.data.identifiers import IdentifierScan, candidate
from oblivio.data.record_ids import with_record_ids
from oblivio.data.sharding import (
    DatasetWriter, Layout, Spill, place, read_holdout, read_layout, read_shard, settle_slices,
)
from oblivio.data.sources import BATCH_ROWS, TableSource, open_source
from oblivio.data.validate import TableValidation, check_columns, numpy_numeric
from oblivio.ensemble import MANIFEST, AuditCache, Ensemble, aggregate, shard_file
from oblivio.errors import DataError, IntegrityError
from oblivio.keys import keyed_int, record_key, subject_key
from oblivio.training.sisa import (
    CheckpointStore, Recipe, ShardData, chain_keys, fully_trained, load_final_model, train_shard, weights_digest,
)
from oblivio.unlearning.corrective import apply_corrections, corrections
from oblivio.workspace import Workspace

Progress = Callable[[str], None]
BASELINE = "baseline"


def shard_name(k: int) -> str:
    return f"shard-{k}"


# --- ingest -------------------------------------------------------------------------

def sample_subjects(subjects: Iterable[str], n: int, secret: bytes) -> frozenset[str]:
    """The `n` distinct subjects with the smallest keyed hashes (ties: first seen first)."""
    distinct = list(dict.fromkeys(subjects))
    return frozenset(sorted(distinct, key=lambda s: keyed_int(secret, "sample", s))[:n])


def limit_subjects(df: pd.DataFrame, subject_col: str, n: int, secret: bytes) -> pd.DataFrame:
    """A deterministic sample of `n` subjects (smallest keyed hashes): quick tours and tests."""
    subjects = df[subject_col].astype(str)
    return df[subjects.isin(sample_subjects(subjects.unique(), n, secret))].reset_index(drop=True)


def drop_tombstoned(df: pd.DataFrame, ws: Workspace, *, subjects: frozenset[str], records: frozenset[str]
                    ) -> tuple[pd.DataFrame, int]:
    """Remove rows of erased subjects and erased records; they must never come back."""
    if not subjects and not records:
        return df, 0
    cols = ws.params.data.columns
    s_keys = df[cols.subject_id].astype(str).map(lambda s: subject_key(ws.secret, s))
    r_keys = df[cols.record_id].astype(str).map(lambda r: record_key(ws.secret, r))
    erased = s_keys.isin(subjects) | r_keys.isin(records)
    return df[~erased].reset_index(drop=True), int(erased.sum())


def tombstones(ws: Workspace) -> tuple[frozenset[str], frozenset[str]]:
    """(erased subject keys, erased record keys) from the ledger; empty before any request."""
    if not ws.ledger_path.exists():
        return frozenset(), frozenset()
    from oblivio.ledger import Ledger

    ledger = Ledger(ws.ledger_path)
    try:
        return ledger.tombstones(), ledger.record_tombstones()
    finally:
        ledger.close()


def ingest(root: Path, *, batch_rows: int = BATCH_ROWS, reslice: bool = False) -> dict:
    """Load, drop erased people, validate, place in shards/slices, write partitions.

    The previous partitions' layout is kept: each record keeps its slice, and records that
    arrive now go to their shard's newest slice (`settle_slices`), so a growth run retrains
    one stage per shard that received any. A new layout is made on the first ingest, when
    `sisa.shards` or `sisa.slices` changed, or with `reslice` (a rebalance, and a full retrain).

    The source streams through in batches of `batch_rows`: each is checked, filtered,
    validated and placed, and its rows parked by shard (`Spill`); then each partition is
    written from its own rows. Memory follows the batch and the largest shard (or the
    holdout), not the table. Nothing is written unless the whole table validates.
    """
    ws = Workspace(root)
    params = ws.params
    cols = params.data.columns
    source = open_source(params.data.source, ws.root, batch_rows=batch_rows)
    check_columns(source.columns, params.data)
    encoder = pin_encoding(ws, source)
    keep = [cols.record_id, cols.subject_id, cols.label, *cols.features]
    validation = TableValidation(params.data, encoder)
    scan = identifier_scan(encoder, cols.subject_id)
    dropped = 0
    previous = None if reslice else read_layout(ws.shards_dir)
    wanted = Layout(shards=params.sisa.shards, slices=params.sisa.slices, placement=params.sisa.placement)
    kept = previous is not None and (previous.shards, previous.slices) == (wanted.shards, wanted.slices)
    layout = previous if kept else wanted
    with Spill(ws.state_dir) as spill:
        for batch, n in _batches(ws, source):
            dropped += n
            check_values(batch, encoder)
            validation.add(batch)
            scan.add(batch)
            if len(batch):
                spill.add(*place(batch[keep], cols, ws.secret, shards=layout.shards, slices=layout.slices,
                                 holdout_fraction=params.data.holdout_fraction, placement=layout.placement))
        summary = validation.finish()
        if not spill.train_rows or not spill.holdout_rows:
            raise DataError(f"After the holdout split, {'training' if not spill.train_rows else 'held-out'} data is "
                            f"empty ({spill.train_rows + spill.holdout_rows} rows). "
                            "Add data or change data.holdout_fraction.")
        with DatasetWriter(shards_dir=ws.shards_dir, holdout_path=ws.holdout_path) as out:
            shards = [_write_shard(out, k, spill.shard(k), layout.slices,
                                   read_shard(ws.shards_dir, k, columns=[RECORD_KEY, SLICE]) if kept else None)
                      for k in range(layout.shards)]
            out.write_layout(layout)
            holdout_subjects = _write_holdout(out, spill.holdout())
            out.commit()
    unit_stages = "subject_stages" if params.dp.unit == "subject" else "stages"
    calibration = calibrate_dp(ws, [s[unit_stages] for s in shards if s["rows"]])
    return {
        "dp_noise_multiplier": calibration["noise_multiplier"] if calibration else None,
        "n_records": spill.train_rows,
        "n_subjects": sum(s["subjects"] for s in shards),
        "n_holdout_records": spill.holdout_rows,
        "n_holdout_subjects": holdout_subjects,
        "n_dropped_tombstoned": dropped,
        "max_records_per_subject": max(s["max_per_subject"] for s in shards),
        "shard_sizes": [s["rows"] for s in shards],
        "placement": {"layout": "kept" if kept else ("resliced" if reslice and previous else "new"),
                      "rule": layout.placement, "records_arrived": sum(s["arrived"] for s in shards),
                      "shards_grown": [k for k, s in enumerate(shards) if s["arrived"]],
                      # how lopsided growth made the slices: the newest one's share of its shard, at worst
                      "newest_slice_share": max(s["newest_share"] for s in shards)},
        "validation": summary,
        "input_width": encoder.width,
        "warnings": scan.warnings(),
    }


def identifier_scan(encoder: Encoder, subject_id: str) -> IdentifierScan:
    return IdentifierScan([c.name for c in encoder.columns if candidate(c.kind, c.source_type == "long")], subject_id)


def _encoding_key(ws: Workspace) -> str:
    p = ws.params
    declared = [dataclasses.asdict(s) for s in p.data.columns.specs()]
    return hashlib.sha256(json.dumps([declared, p.train.model], default=list).encode()).hexdigest()


def pin_encoding(ws: Workspace, source: TableSource) -> Encoder:
    """The feature encoding, resolved from params.yaml and the source's column types once, then pinned.

    Pinned like the DP noise: a kind inferred from the types must not flip after an
    erasure (a CSV column whose only numbers belonged to the erased person), or every
    shard's recipe would change. Declaring the features differently re-resolves it.
    """
    key = _encoding_key(ws)
    if ws.encoding_path.exists():
        pinned = json.loads(ws.encoding_path.read_text())
        if pinned["key"] == key:
            return Encoder.from_json(pinned["encoder"])
    cols = ws.params.data.columns
    encoder = resolve(cols.specs(), source.dtypes(list(cols.features)), model=ws.params.train.model)
    ws.encoding_path.parent.mkdir(parents=True, exist_ok=True)
    ws.encoding_path.write_text(json.dumps({"key": key, "encoder": encoder.to_json()}, indent=1))
    return encoder


def encoder_for(ws: Workspace) -> Encoder:
    """The pinned encoding; the ingest step pins it."""
    pinned = json.loads(ws.encoding_path.read_text()) if ws.encoding_path.exists() else None
    if pinned is None or pinned["key"] != _encoding_key(ws):
        raise IntegrityError("The feature encoding has not been resolved for these data.columns.features; "
                             "run `oblivio run` (its ingest step resolves it).")
    return Encoder.from_json(pinned["encoder"])


def _batches(ws: Workspace, source: TableSource) -> Iterator[tuple[pd.DataFrame, int]]:
    """(batch, rows of erased people it lost): the declared columns, sampled (`limit_subjects`), erased rows out."""
    data = ws.params.data
    cols = data.columns
    chosen = (sample_subjects(_subject_ids(source, cols.subject_id), data.limit_subjects, ws.secret)
              if data.limit_subjects else None)
    erased_subjects, erased_records = tombstones(ws)
    read = [*([] if cols.derive_record_id else [cols.record_id]), cols.subject_id, cols.label, *cols.features]
    for batch in source.batches(list(dict.fromkeys(read))):
        batch = with_record_ids(numpy_numeric(batch, cols.features), cols)
        if chosen is not None:
            batch = batch[batch[cols.subject_id].astype(str).isin(chosen)].reset_index(drop=True)
        yield drop_tombstoned(batch, ws, subjects=erased_subjects, records=erased_records)


def _subject_ids(source: TableSource, column: str) -> Iterator[str]:
    """Every subject id as text, in source order: one pass over that column alone."""
    for batch in source.batches([column]):
        yield from batch[column].astype(str).unique()


def _write_shard(out: DatasetWriter, k: int, rows: pd.DataFrame, n_slices: int, placed: pd.DataFrame | None) -> dict:
    """Write shard k, keeping the slices of the records `placed` (the previous partition) held;
    what the summary and the DP calibration need of it.

    A person's rows all sit in one shard, so people can be counted shard by shard.
    """
    from oblivio.training.dp import stage_sizes, subject_stage_sizes

    rows, arrived = settle_slices(rows, placed, n_slices)
    out.write_shard(k, rows)
    per_subject = rows.groupby(SUBJECT_KEY).size()
    return {"rows": len(rows), "subjects": len(per_subject), "stages": stage_sizes(rows[SLICE].to_numpy(), n_slices),
            "subject_stages": subject_stage_sizes(rows[SLICE].to_numpy(), rows[SUBJECT_KEY].to_numpy(), n_slices),
            "max_per_subject": int(per_subject.max()) if len(per_subject) else 0, "arrived": arrived,
            "newest_share": float((rows[SLICE] == n_slices - 1).mean()) if len(rows) else 0.0}


def _write_holdout(out: DatasetWriter, rows: pd.DataFrame) -> int:
    """Write the held-out rows; how many people they hold."""
    out.write_holdout(rows)
    return int(rows[SUBJECT_KEY].nunique())


# --- training -----------------------------------------------------------------------

def recipe_for(ws: Workspace) -> Recipe:
    p = ws.params
    encoder = encoder_for(ws)
    return Recipe(model=p.train.model, hidden=p.train.hidden, n_inputs=encoder.width, encoding=encoder,
                  n_classes=len(p.data.label_domain), epochs_per_slice=p.train.epochs_per_slice,
                  batch_size=p.train.batch_size, lr=p.train.lr, weight_decay=p.train.weight_decay, seed=p.seed,
                  dp=dp_spec(ws), numerics=numerics.current(p.train.numerics))


def published_numerics(ws: Workspace) -> numerics.Numerics | None:
    """The numerics the published models (and so the checkpoint chains they end) were made under."""
    if not ws.manifest_path.exists():
        return None
    recorded = json.loads(ws.manifest_path.read_text())["recipe"].get("numerics")
    return numerics.Numerics(**recorded) if recorded else None


def _dp_calibration_key(ws: Workspace) -> str:
    p = ws.params
    inputs = [p.dp.target_epsilon, p.dp.delta, p.dp.accountant, p.train.batch_size, p.train.epochs_per_slice,
              p.sisa.shards, p.sisa.slices]
    if p.dp.unit != "record":  # record-level calibrations made before subject-level DP stay pinned
        inputs.append(p.dp.unit)
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def calibrate_dp(ws: Workspace, shard_stages: list[list[int]]) -> dict | None:
    """Pin one noise multiplier for every shard, the first time DP is on with these settings.

    `shard_stages`: records (or with dp.unit subject, people) seen by each stage
    (`stage_sizes`, `subject_stage_sizes`), one list per non-empty shard.
    The largest multiplier any shard needs to stay within `target_epsilon` over all its
    stages. It is pinned, not recomputed per run: a multiplier that followed the shard
    sizes would change after every erasure, change the recipe, and retrain every shard.
    Each shard's epsilon is then accounted from what it actually trained on.
    """
    p = ws.params
    if not p.dp.enabled:
        return None
    key = _dp_calibration_key(ws)
    if ws.dp_calibration_path.exists():
        pinned = json.loads(ws.dp_calibration_path.read_text())
        if pinned["key"] == key:
            return pinned
    from oblivio.training.dp import calibrate_shard_noise

    sigmas = [calibrate_shard_noise(stages, batch_size=p.train.batch_size, epochs_per_slice=p.train.epochs_per_slice,
                                    target_epsilon=p.dp.target_epsilon, delta=p.dp.delta, accountant=p.dp.accountant)
              for stages in shard_stages]
    pinned = {"key": key, "noise_multiplier": max(sigmas), "target_epsilon": p.dp.target_epsilon,
              "delta": p.dp.delta, "accountant": p.dp.accountant, "unit": p.dp.unit}
    ws.dp_calibration_path.parent.mkdir(parents=True, exist_ok=True)
    ws.dp_calibration_path.write_text(json.dumps(pinned, indent=1))
    return pinned


def dp_spec(ws: Workspace):
    """The recipe's DP part, from the pinned calibration; None when DP is off."""
    p = ws.params.dp
    if not p.enabled:
        return None
    pinned = json.loads(ws.dp_calibration_path.read_text()) if ws.dp_calibration_path.exists() else None
    if pinned is None or pinned["key"] != _dp_calibration_key(ws):
        raise IntegrityError("DP is on but its noise has not been calibrated for these settings; "
                             "run `oblivio run` (its ingest step calibrates it).")
    from oblivio.training.dp import DpSpec

    return DpSpec(noise_multiplier=pinned["noise_multiplier"], max_grad_norm=p.max_grad_norm, delta=p.delta,
                  accountant=p.accountant, target_epsilon=p.target_epsilon, grad_sample_mode=p.grad_sample_mode,
                  unit=p.unit)


def label_index(ws: Workspace, labels: pd.Series) -> np.ndarray:
    domain = {v: i for i, v in enumerate(ws.params.data.label_domain)}
    return labels.map(domain).to_numpy(np.int64)


def shard_data(ws: Workspace, frame: pd.DataFrame) -> ShardData:
    frame = frame.sort_values([SLICE, RECORD_KEY], kind="stable")
    cols = ws.params.data.columns
    return ShardData(
        x=encoder_for(ws).transform(frame),
        y=label_index(ws, frame[cols.label]),
        slices=frame[SLICE].to_numpy(np.int64),
        record_keys=tuple(frame[RECORD_KEY].tolist()),
        subjects=np.unique(frame[SUBJECT_KEY].to_numpy(), return_inverse=True)[1].astype(np.int64),
    )


def train_one_shard(root: Path, k: int, progress: Progress | None = None, *, resume: bool = True) -> dict:
    """Train shard `k` from its last reusable checkpoint; its features are read only if a stage must train."""
    ws = Workspace(root)
    recipe, store = recipe_for(ws), CheckpointStore(ws.checkpoints_dir)
    published = published_numerics(ws) if resume else None
    if published is not None:  # the chains to extend may have been made elsewhere
        numerics.require(published, f"extend shard {k}'s checkpoint chain", here=recipe.numerics)
    label = f"shard {k + 1}/{ws.params.sisa.shards}"
    keys = read_shard(ws.shards_dir, k, columns=[SLICE, RECORD_KEY])
    result = fully_trained(tuple(keys[RECORD_KEY].tolist()), keys[SLICE].to_numpy(np.int64), recipe=recipe,
                           shard=shard_name(k), n_slices=ws.params.sisa.slices, store=store, progress=progress,
                           label=label) if resume else None
    if result is None:
        result = train_shard(shard_data(ws, read_shard(ws.shards_dir, k)), recipe=recipe, shard=shard_name(k),
                             n_slices=ws.params.sisa.slices, secret=ws.secret, store=store, progress=progress,
                             label=label, resume=resume)
    return {"index": k, **result.to_json()}


def train_baseline(root: Path, progress: Progress | None = None, *, resume: bool = True) -> dict:
    """One model on all training rows, same recipe and slicing: what sharding costs in accuracy."""
    ws = Workspace(root)
    frames = [read_shard(ws.shards_dir, k) for k in range(ws.params.sisa.shards)]
    data = shard_data(ws, pd.concat(frames, ignore_index=True))
    result = train_shard(data, recipe=recipe_for(ws), shard=BASELINE, n_slices=ws.params.sisa.slices,
                         secret=ws.secret, store=CheckpointStore(ws.checkpoints_dir), progress=progress,
                         label="baseline (1 shard)", resume=resume)
    return result.to_json()


def publish_models(root: Path, shard_results: list[dict]) -> dict:
    """Write models/ (final shard weights + manifest) atomically; returns the manifest.

    Standing corrections (SSD) are applied here, to every shard, every time: the published
    weights are the trained ones dampened by each correction still in force.
    """
    ws = Workspace(root)
    store = CheckpointStore(ws.checkpoints_dir)
    params = ws.params
    recipe = recipe_for(ws)
    ordered = sorted(shard_results, key=lambda r: r["index"])
    for r in ordered:  # a worker with other numerics or versions keys its chain by another recipe
        if r["chain"] != chain_keys(recipe.digest(), r["shard"], r["commitments"]):
            raise IntegrityError(f"shard {r['index']} was trained under another recipe than this process's "
                                 f"({recipe.numerics.describe() if recipe.numerics else 'no numerics recorded'}): "
                                 "are the workers' torch/oneMKL versions or numerics mode the same as here?")
    manifest = {
        "recipe": json.loads(json.dumps(dataclasses.asdict(recipe))),
        "recipe_sha256": recipe.digest(),
        "features": list(params.data.columns.features),
        "labels": list(params.data.label_domain),
        "aggregation": params.sisa.aggregation,
        "n_slices": params.sisa.slices,
        "shards": [{k: r.get(k) for k in ("index", "shard", "n_records", "commitments", "chain", "weights_sha256",
                                          "epsilon")} for r in ordered],
    }
    standing = corrections(ws.corrections_dir)
    holdout = read_holdout(ws.holdout_path) if standing else None  # the data is read only to correct
    cols = params.data.columns
    staging = Path(tempfile.mkdtemp(prefix=".models-", dir=ws.root))
    try:
        for r, entry in zip(ordered, manifest["shards"]):
            model = load_final_model(recipe, ws.secret, r["shard"], store, r["chain"][-1])
            entry["trained_weights_sha256"] = r["weights_sha256"]
            entry["corrections"] = apply_corrections(
                model, shard=r["index"], train=read_shard(ws.shards_dir, r["index"]), holdout=holdout,
                store=ws.corrections_dir, features=list(cols.features), label=cols.label,
                labels=list(params.data.label_domain), encode=recipe.encoding.transform, secret=ws.secret,
                tolerance=params.unlearning.ssd_tolerance) if standing else []
            entry["weights_sha256"] = weights_digest(model.state_dict())
            import torch

            torch.save(model.state_dict(), staging / shard_file(r["index"]))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        old = ws.root / ".models.old"
        shutil.rmtree(old, ignore_errors=True)
        if ws.models_dir.exists():
            os.replace(ws.models_dir, old)
        os.replace(staging, ws.models_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# --- evaluation ---------------------------------------------------------------------

def holdout_arrays(ws: Workspace) -> tuple[pd.DataFrame, np.ndarray]:
    """(raw feature columns, label indices) of the held-out rows."""
    holdout = read_holdout(ws.holdout_path)
    cols = ws.params.data.columns
    return holdout[list(cols.features)], label_index(ws, holdout[cols.label])


def privacy_report(ws: Workspace, spec) -> dict:
    """The ensemble's DP guarantee from each shard's own accounting (see training/dp.py)."""
    from oblivio.training.dp import ensemble_privacy

    manifest = json.loads((ws.models_dir / MANIFEST).read_text())
    subjects = pd.concat([pq.read_table(p, columns=[SUBJECT_KEY]).to_pandas()
                          for p in ws.shards_dir.glob("shard=*/part.parquet")])
    report = ensemble_privacy([s["epsilon"] for s in manifest["shards"]], delta=spec.delta, unit=spec.unit,
                              max_records_per_subject=int(subjects.groupby(SUBJECT_KEY).size().max()))
    return {**report, "accountant": spec.accountant, "noise_multiplier": spec.noise_multiplier,
            "max_grad_norm": spec.max_grad_norm, "shard_epsilons": [s["epsilon"] for s in manifest["shards"]]}


def quarantined(ws: Workspace) -> pd.DataFrame | None:
    """Rows an erasure in progress removed, kept only until the forget-set audit has run."""
    files = sorted(ws.quarantine_dir.glob("*.parquet")) if ws.quarantine_dir.exists() else []
    return pd.concat([read_holdout(f) for f in files], ignore_index=True) if files else None


def accuracy_report(proba: np.ndarray, y: np.ndarray, labels: list) -> dict:
    pred = proba.argmax(axis=1)
    per_class = {str(lab): float((pred[y == i] == i).mean()) if (y == i).any() else None for i, lab in enumerate(labels)}
    return {"accuracy": float((pred == y).mean()), "per_class_accuracy": per_class, "n_eval": int(len(y))}


# Kept by the process between audits: `oblivio serve` audits after every erasure, and
# most shard models and partitions have not changed since the last one (see AuditCache).
AUDIT_CACHE = AuditCache()


def prime_audit(root: Path) -> None:
    """Score the published models' holdout and member samples into AUDIT_CACHE, so that a
    long-lived process's first audit is as quick as its next ones. Writes nothing."""
    ws = Workspace(root)
    if not ws.manifest_path.exists():
        return
    ensemble = Ensemble.load(ws.models_dir)
    AUDIT_CACHE.scored(ws.holdout_path, "all", ensemble, lambda: holdout_arrays(ws))
    cols = ws.params.data.columns
    score_members(ensemble, shards_dir=ws.shards_dir, n_shards=ws.params.sisa.shards, features=list(cols.features),
                  label=cols.label, labels=list(ws.params.data.label_domain), cache=AUDIT_CACHE)
    AUDIT_CACHE.keep_only_used()


def evaluate(root: Path, baseline: dict | None = None) -> dict:
    """The audit: held-out utility (ensemble, shards, baseline) and the membership-inference
    attacks; writes reports/metrics.json and the MIA report and ROC plot."""
    ws = Workspace(root)
    ensemble = Ensemble.load(ws.models_dir)
    y, logits = AUDIT_CACHE.scored(ws.holdout_path, "all", ensemble, lambda: holdout_arrays(ws))
    labels = list(ws.params.data.label_domain)
    metrics = accuracy_report(aggregate(logits, ensemble.aggregation), y, labels)
    metrics["shard_accuracy"] = [float((lg.argmax(1) == y).mean()) for lg in logits]
    if baseline:
        model = load_final_model(recipe_for(ws), ws.secret, BASELINE, CheckpointStore(ws.checkpoints_dir),
                                 baseline["chain"][-1])
        import torch

        with torch.no_grad():
            x, _ = AUDIT_CACHE.inputs(ws.holdout_path, "all", ensemble, lambda: holdout_arrays(ws))  # read above
            base_logits = model(x).double().numpy()
        metrics["baseline_accuracy"] = float((base_logits.argmax(1) == y).mean())
    cols = ws.params.data.columns
    mia = membership_audit(ensemble=ensemble, holdout=(logits, y), shards_dir=ws.shards_dir,
                           n_shards=ws.params.sisa.shards, features=list(cols.features), label=cols.label,
                           labels=labels, reports_dir=ws.reports_dir, forget=quarantined(ws), seed=ws.params.seed,
                           cache=AUDIT_CACHE)
    AUDIT_CACHE.keep_only_used()
    metrics["mia"] = headline(mia)
    if ensemble.recipe.dp is not None:
        metrics["dp"] = privacy_report(ws, ensemble.recipe.dp)
    ws.reports_dir.mkdir(exist_ok=True)
    (ws.reports_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics

