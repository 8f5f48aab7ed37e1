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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from oblivio.audit.membership import headline, membership_audit
from oblivio.data.sharding import (
    RECORD_KEY, SHARD, SLICE, SUBJECT_KEY, place, read_holdout, read_shard, record_key, subject_key, write_dataset,
)
from oblivio.data.sources import load_source
from oblivio.data.validate import check_columns, numpy_numeric, validate
from oblivio.ensemble import MANIFEST, Ensemble, aggregate, shard_file
from oblivio.errors import DataError, IntegrityError
from oblivio.keys import keyed_int
from oblivio.training.nets import featurize, input_width
from oblivio.training.sisa import CheckpointStore, Recipe, ShardData, load_final_model, train_shard, weights_digest
from oblivio.unlearning.corrective import apply_corrections
from oblivio.workspace import Workspace

Progress = Callable[[str], None]
BASELINE = "baseline"


def shard_name(k: int) -> str:
    return f"shard-{k}"


# --- ingest -------------------------------------------------------------------------

def limit_subjects(df: pd.DataFrame, subject_col: str, n: int, secret: bytes) -> pd.DataFrame:
    """A deterministic sample of `n` subjects (smallest keyed hashes): quick tours and tests."""
    subjects = pd.Series(df[subject_col].astype(str).unique())
    ranked = subjects.iloc[np.argsort([keyed_int(secret, "sample", s) for s in subjects], kind="stable")]
    keep = set(ranked.iloc[:n])
    return df[df[subject_col].astype(str).isin(keep)].reset_index(drop=True)


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


def ingest(root: Path) -> dict:
    """Load, drop erased people, validate, place in shards/slices, write partitions.

    Nothing is written unless validation passes.
    """
    ws = Workspace(root)
    params = ws.params
    cols = params.data.columns
    df = load_source(params.data.source, ws.root)
    check_columns(df, params.data)
    df = numpy_numeric(df, cols.features)
    if params.data.limit_subjects:
        df = limit_subjects(df, cols.subject_id, params.data.limit_subjects, ws.secret)
    erased_subjects, erased_records = tombstones(ws)
    df, dropped = drop_tombstoned(df, ws, subjects=erased_subjects, records=erased_records)
    validation = validate(df, params.data)
    keep = [cols.record_id, cols.subject_id, cols.label, *cols.features]
    train, holdout = place(df[keep], cols, ws.secret, shards=params.sisa.shards, slices=params.sisa.slices,
                           holdout_fraction=params.data.holdout_fraction)
    if train.empty or holdout.empty:
        raise DataError(f"After the holdout split, {'training' if train.empty else 'held-out'} data is empty "
                        f"({len(df)} rows). Add data or change data.holdout_fraction.")
    write_dataset(train, holdout, shards_dir=ws.shards_dir, holdout_path=ws.holdout_path, shards=params.sisa.shards)
    calibration = calibrate_dp(ws, train)
    return {
        "dp_noise_multiplier": calibration["noise_multiplier"] if calibration else None,
        "n_records": int(len(train)),
        "n_subjects": int(train[SUBJECT_KEY].nunique()),
        "n_holdout_records": int(len(holdout)),
        "n_holdout_subjects": int(holdout[SUBJECT_KEY].nunique()),
        "n_dropped_tombstoned": dropped,
        "max_records_per_subject": int(train.groupby(SUBJECT_KEY).size().max()),
        "shard_sizes": [int((train[SHARD] == k).sum()) for k in range(params.sisa.shards)],
        "validation": validation,
    }


# --- training -----------------------------------------------------------------------

def recipe_for(ws: Workspace) -> Recipe:
    p = ws.params
    return Recipe(model=p.train.model, hidden=p.train.hidden,
                  n_inputs=input_width(len(p.data.columns.features), p.train.model),
                  n_classes=len(p.data.label_domain), epochs_per_slice=p.train.epochs_per_slice,
                  batch_size=p.train.batch_size, lr=p.train.lr, weight_decay=p.train.weight_decay, seed=p.seed,
                  dp=dp_spec(ws))


def _dp_calibration_key(ws: Workspace) -> str:
    p = ws.params
    inputs = [p.dp.target_epsilon, p.dp.delta, p.dp.accountant, p.train.batch_size, p.train.epochs_per_slice,
              p.sisa.shards, p.sisa.slices]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def calibrate_dp(ws: Workspace, train: pd.DataFrame) -> dict | None:
    """Pin one noise multiplier for every shard, the first time DP is on with these settings.

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
    from oblivio.training.dp import calibrate_shard_noise, stage_sizes

    sigmas = [calibrate_shard_noise(stage_sizes(part[SLICE].to_numpy(), p.sisa.slices), batch_size=p.train.batch_size,
                                    epochs_per_slice=p.train.epochs_per_slice, target_epsilon=p.dp.target_epsilon,
                                    delta=p.dp.delta, accountant=p.dp.accountant)
              for _, part in train.groupby(SHARD)]
    pinned = {"key": key, "noise_multiplier": max(sigmas), "target_epsilon": p.dp.target_epsilon,
              "delta": p.dp.delta, "accountant": p.dp.accountant}
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
                  accountant=p.accountant, target_epsilon=p.target_epsilon, grad_sample_mode=p.grad_sample_mode)


def label_index(ws: Workspace, labels: pd.Series) -> np.ndarray:
    domain = {v: i for i, v in enumerate(ws.params.data.label_domain)}
    return labels.map(domain).to_numpy(np.int64)


def shard_data(ws: Workspace, frame: pd.DataFrame) -> ShardData:
    frame = frame.sort_values([SLICE, RECORD_KEY], kind="stable")
    cols = ws.params.data.columns
    return ShardData(
        x=featurize(frame[list(cols.features)].to_numpy(np.float64), ws.params.train.model),
        y=label_index(ws, frame[cols.label]),
        slices=frame[SLICE].to_numpy(np.int64),
        record_keys=tuple(frame[RECORD_KEY]),
    )


def train_one_shard(root: Path, k: int, progress: Progress | None = None, *, resume: bool = True) -> dict:
    ws = Workspace(root)
    data = shard_data(ws, read_shard(ws.shards_dir, k))
    result = train_shard(data, recipe=recipe_for(ws), shard=shard_name(k), n_slices=ws.params.sisa.slices,
                         secret=ws.secret, store=CheckpointStore(ws.checkpoints_dir), progress=progress,
                         label=f"shard {k + 1}/{ws.params.sisa.shards}", resume=resume)
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
    holdout = read_holdout(ws.holdout_path)
    cols = params.data.columns
    staging = Path(tempfile.mkdtemp(prefix=".models-", dir=ws.root))
    try:
        for r, entry in zip(ordered, manifest["shards"]):
            model = load_final_model(recipe, ws.secret, r["shard"], store, r["chain"][-1])
            entry["trained_weights_sha256"] = r["weights_sha256"]
            entry["corrections"] = apply_corrections(
                model, shard=r["index"], train=read_shard(ws.shards_dir, r["index"]), holdout=holdout,
                store=ws.corrections_dir, features=list(cols.features), label=cols.label,
                labels=list(params.data.label_domain), model_kind=params.train.model, secret=ws.secret,
                tolerance=params.unlearning.ssd_tolerance)
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

def holdout_arrays(ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    holdout = read_holdout(ws.holdout_path)
    cols = ws.params.data.columns
    return holdout[list(cols.features)].to_numpy(np.float64), label_index(ws, holdout[cols.label])


def privacy_report(ws: Workspace, spec) -> dict:
    """The ensemble's DP guarantee from each shard's own accounting (see training/dp.py)."""
    from oblivio.training.dp import ensemble_privacy

    manifest = json.loads((ws.models_dir / MANIFEST).read_text())
    subjects = pd.concat([pq.read_table(p, columns=[SUBJECT_KEY]).to_pandas()
                          for p in ws.shards_dir.glob("shard=*/part.parquet")])
    report = ensemble_privacy([s["epsilon"] for s in manifest["shards"]], delta=spec.delta,
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


def evaluate(root: Path, baseline: dict | None = None) -> dict:
    """The audit: held-out utility (ensemble, shards, baseline) and the membership-inference
    attacks; writes reports/metrics.json and the MIA report and ROC plot."""
    ws = Workspace(root)
    ensemble = Ensemble.load(ws.models_dir)
    raw, y = holdout_arrays(ws)
    logits = ensemble.shard_logits(ensemble.featurize(raw))
    labels = list(ws.params.data.label_domain)
    metrics = accuracy_report(aggregate(logits, ensemble.aggregation), y, labels)
    metrics["shard_accuracy"] = [float((lg.argmax(1) == y).mean()) for lg in logits]
    if baseline:
        model = load_final_model(recipe_for(ws), ws.secret, BASELINE, CheckpointStore(ws.checkpoints_dir),
                                 baseline["chain"][-1])
        import torch

        with torch.no_grad():
            base_logits = model(ensemble.featurize(raw)).double().numpy()
        metrics["baseline_accuracy"] = float((base_logits.argmax(1) == y).mean())
    cols = ws.params.data.columns
    mia = membership_audit(models_dir=ws.models_dir, shards_dir=ws.shards_dir, holdout_path=ws.holdout_path,
                           n_shards=ws.params.sisa.shards, features=list(cols.features), label=cols.label,
                           labels=labels, reports_dir=ws.reports_dir, forget=quarantined(ws), seed=ws.params.seed)
    metrics["mia"] = headline(mia)
    if ensemble.recipe.dp is not None:
        metrics["dp"] = privacy_report(ws, ensemble.recipe.dp)
    ws.reports_dir.mkdir(exist_ok=True)
    (ws.reports_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics

