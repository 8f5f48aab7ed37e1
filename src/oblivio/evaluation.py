"""The evaluate step: held-out utility of the ensemble, its shards and the baseline, the
membership-inference audit and the DP report, written to reports/."""
from __future__ import annotations

import json
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from oblivio.audit import membership
from oblivio.audit.membership import headline, membership_audit, score_members
from oblivio.data.columns import SUBJECT_KEY
from oblivio.data.sharding import read_holdout
from oblivio.ensemble import MANIFEST, AuditCache, Ensemble, aggregate
from oblivio.shard_training import BASELINE, label_index, recipe_for
from oblivio.training.sisa import CheckpointStore, load_final_model
from oblivio.workspace import WorkspaceDir


def holdout_arrays(ws: WorkspaceDir) -> tuple[pd.DataFrame, np.ndarray]:
    """(raw feature columns, label indices) of the held-out rows."""
    holdout = read_holdout(ws.holdout_path)
    cols = ws.params.data.columns
    return holdout[list(cols.features)], label_index(ws, holdout[cols.label])


def privacy_report(ws: WorkspaceDir, spec) -> dict:
    """The ensemble's DP guarantee from each shard's own accounting (see training/dp.py)."""
    from oblivio.training.dp import ensemble_privacy

    manifest = json.loads((ws.models_dir / MANIFEST).read_text())
    subjects = pd.concat([pq.read_table(p, columns=[SUBJECT_KEY]).to_pandas()
                          for p in ws.shards_dir.glob("shard=*/part.parquet")])
    report = ensemble_privacy([s["epsilon"] for s in manifest["shards"]], delta=spec.delta, unit=spec.unit,
                              max_records_per_subject=int(subjects.groupby(SUBJECT_KEY).size().max()))
    return {**report, "accountant": spec.accountant, "noise_multiplier": spec.noise_multiplier,
            "max_grad_norm": spec.max_grad_norm, "shard_epsilons": [s["epsilon"] for s in manifest["shards"]]}


def quarantined(ws: WorkspaceDir) -> pd.DataFrame | None:
    """Rows an erasure in progress removed, kept only until the forget-set audit has run."""
    files = sorted(ws.quarantine_dir.glob("*.parquet")) if ws.quarantine_dir.exists() else []
    return pd.concat([read_holdout(f) for f in files], ignore_index=True) if files else None


def accuracy(scores: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose highest score (logit or probability) is their label: the one definition
    the ensemble, each shard model and the baseline are measured by."""
    return float((scores.argmax(axis=1) == y).mean())


def accuracy_report(proba: np.ndarray, y: np.ndarray, labels: list) -> dict:
    pred = proba.argmax(axis=1)
    per_class = {str(lab): float((pred[y == i] == i).mean()) if (y == i).any() else None for i, lab in enumerate(labels)}
    return {"accuracy": accuracy(proba, y), "per_class_accuracy": per_class, "n_eval": int(len(y))}


# Kept by the process between audits: `oblivio serve` audits after every erasure, and
# most shard models and partitions have not changed since the last one (see AuditCache).
AUDIT_CACHE = AuditCache()


def prime_audit(root: Path) -> None:
    """Score the published models' holdout and member samples into AUDIT_CACHE, so that a
    long-lived process's first audit is as quick as its next ones. Writes nothing."""
    ws = WorkspaceDir(root)
    if not ws.manifest_path.exists():
        return
    ensemble = Ensemble.load(ws.models_dir)
    AUDIT_CACHE.scored(ws.holdout_path, "all", ensemble, lambda: holdout_arrays(ws))
    cols = ws.params.data.columns
    score_members(ensemble, shards_dir=ws.shards_dir, n_shards=ws.params.sisa.shards, features=list(cols.features),
                  label=cols.label, labels=list(ws.params.data.label_domain), cache=AUDIT_CACHE)
    AUDIT_CACHE.keep_only_used()


def evaluate(root: Path, baseline: dict | None = None, executor: Executor | None = None,
             defer_intervals: bool = False) -> dict:
    """The audit: held-out utility (ensemble, shards, baseline) and the membership-inference
    attacks; writes reports/metrics.json and the MIA report and ROC plot. `executor`: worker
    processes that may take part of the attacks (see `membership_audit`). `defer_intervals`:
    the bootstrap intervals no gate reads are drawn later, by `attach_intervals`."""
    ws = WorkspaceDir(root)
    ensemble = Ensemble.load(ws.models_dir)
    y, logits = AUDIT_CACHE.scored(ws.holdout_path, "all", ensemble, lambda: holdout_arrays(ws))
    labels = list(ws.params.data.label_domain)
    metrics = accuracy_report(aggregate(logits, ensemble.aggregation), y, labels)
    metrics["shard_accuracy"] = [accuracy(lg, y) for lg in logits]
    if baseline:
        model = load_final_model(recipe_for(ws), ws.secret, BASELINE, CheckpointStore(ws.checkpoints_dir),
                                 baseline["chain"][-1])
        import torch

        with torch.no_grad():
            x, _ = AUDIT_CACHE.inputs(ws.holdout_path, "all", ensemble, lambda: holdout_arrays(ws))  # read above
            base_logits = model(x).double().numpy()
        metrics["baseline_accuracy"] = accuracy(base_logits, y)
    cols = ws.params.data.columns
    mia = membership_audit(ensemble=ensemble, holdout=(logits, y), shards_dir=ws.shards_dir,
                           n_shards=ws.params.sisa.shards, features=list(cols.features), label=cols.label,
                           labels=labels, reports_dir=ws.reports_dir, forget=quarantined(ws), seed=ws.params.seed,
                           cache=AUDIT_CACHE, executor=executor, intervals=not defer_intervals)
    AUDIT_CACHE.keep_only_used()
    metrics["mia"] = headline(mia)
    if ensemble.recipe.dp is not None:
        metrics["dp"] = privacy_report(ws, ensemble.recipe.dp)
    ws.reports_dir.mkdir(exist_ok=True)
    (ws.reports_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics


def attach_intervals(root: Path, run_id: str, executor: Executor | None = None) -> bool:
    """Draw the MIA report's deferred intervals (see `evaluate`) and replace the report logged to
    MLflow run `run_id` with the completed one. Run after promotion: the gates have read what
    they need, so a deletion request is settled without waiting for these. False if none were due."""
    from oblivio import tracking

    ws = WorkspaceDir(root)
    ensemble = Ensemble.load(ws.models_dir)
    cols = ws.params.data.columns
    y, logits = AUDIT_CACHE.scored(ws.holdout_path, "all", ensemble, lambda: holdout_arrays(ws))
    attached = membership.attach_intervals(
        ensemble=ensemble, holdout=(logits, y),
        shards_dir=ws.shards_dir, n_shards=ws.params.sisa.shards, features=list(cols.features), label=cols.label,
        labels=list(ws.params.data.label_domain), reports_dir=ws.reports_dir, seed=ws.params.seed, cache=AUDIT_CACHE,
        executor=executor)
    AUDIT_CACHE.keep_only_used()
    if attached:
        tracking.attach_files(ws.mlflow, run_id, [str(ws.reports_dir / membership.REPORT)])
    return attached
