"""Manipulated-data scenarios: inject, train, flag a share, correct, measure.

`oblivio scenario backdoor|label-flip` runs this on a scratch copy of the workspace's data
(never the workspace itself) to show what the corrective route buys over exact erasure
alone. Measurements use held-out people only, and only their unmanipulated rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from oblivio.config import parse_yaml
from oblivio.data.record_ids import with_record_ids
from oblivio.data.sharding import read_holdout
from oblivio.data.sources import load_source
from oblivio.ensemble import MANIFEST, Ensemble, aggregate
from oblivio.ingestion import limit_subjects
from oblivio.shard_training import recipe_for
from oblivio.training.sisa import CheckpointStore, load_final_model
from oblivio.unlearning.scenarios import (
    attack_success_rate, confused_class_accuracy, inject_backdoor, inject_label_flip, triggered,
)
from oblivio.workspace import WorkspaceDir


def poison(root: Path, *, kind: str, fraction: float, seed: int) -> tuple[pd.DataFrame, list[str], dict]:
    """The workspace's source data with `fraction` of rows manipulated; returns (table, ids, spec)."""
    ws = WorkspaceDir(root)
    cols = ws.params.data.columns
    df = with_record_ids(load_source(ws.params.data.source, ws.root), cols)
    if ws.params.data.limit_subjects:
        df = limit_subjects(df, cols.subject_id, ws.params.data.limit_subjects, ws.secret)
    labels = list(ws.params.data.label_domain)
    if kind == "backdoor":
        out, ids = inject_backdoor(df, record_id=cols.record_id, subject_id=cols.subject_id, label=cols.label,
                                   features=list(cols.features), fraction=fraction, target_label=labels[-1],
                                   seed=seed)
        spec = {"kind": kind, "trigger": out.attrs.get("backdoor_trigger"), "target_label": labels[-1]}
    else:
        out, ids = inject_label_flip(df, record_id=cols.record_id, label=cols.label, fraction=fraction,
                                     classes=(labels[0], labels[-1]), seed=seed)
        spec = {"kind": kind, "source_class": labels[0], "target_class": labels[-1]}
    out.attrs = {}
    return out, ids, spec


def params_with_source(params_text: str, source: Path) -> str:
    """The user's params.yaml, edited as data, pointing at the manipulated copy of the table.

    The copy carries its record ids already (a derived id would change with the manipulated
    content), so the scratch workspace reads them instead of deriving them again."""
    raw = parse_yaml(params_text)
    data = raw.setdefault("data", {})
    data["source"] = str(source)
    if (data.get("columns") or {}).get("derive_record_id"):
        data["columns"]["derive_record_id"] = False
    return yaml.safe_dump(raw, sort_keys=False)


def _exact_only(ws: WorkspaceDir) -> Ensemble:
    """The retrained shards *before* SSD: the undampened final checkpoints of the manifest."""
    manifest = json.loads((ws.models_dir / MANIFEST).read_text())
    ensemble = Ensemble.load(ws.models_dir)
    store = CheckpointStore(ws.checkpoints_dir)
    recipe = recipe_for(ws)
    ensemble.models = [load_final_model(recipe, ws.secret, s["shard"], store, s["chain"][-1])
                       for s in manifest["shards"]]
    return ensemble


def measure(root: Path, spec: dict, manipulated: set[str]) -> dict:
    """Clean accuracy and the manipulated-behaviour metric of the published and exact-only ensembles."""
    ws = WorkspaceDir(root)
    cols = ws.params.data.columns
    labels = list(ws.params.data.label_domain)
    holdout = read_holdout(ws.holdout_path)
    clean = holdout[~holdout[cols.record_id].astype(str).isin(manipulated)]
    y = clean[cols.label].to_numpy()

    def predict(ensemble: Ensemble, frame: pd.DataFrame) -> np.ndarray:
        logits = ensemble.shard_logits(ensemble.featurize(frame[list(cols.features)]))
        return np.asarray(labels)[aggregate(logits, ensemble.aggregation).argmax(1)]

    out = {}
    for name, ensemble in (("published", Ensemble.load(ws.models_dir)), ("exact_only", _exact_only(ws))):
        pred = predict(ensemble, clean)
        result = {"clean_accuracy": float((pred == y).mean())}
        if spec["kind"] == "backdoor":
            hit = predict(ensemble, triggered(clean, features=list(cols.features), trigger=spec["trigger"]))
            result["attack_success_rate"] = attack_success_rate(hit, y, target_label=spec["target_label"])
        else:
            result["confused_class_accuracy"] = confused_class_accuracy(pred, y, cls=spec["source_class"])
        out[name] = result
    return out
