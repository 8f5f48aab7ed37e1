"""Standing corrections: SSD applied to every published shard model, for as long as it stands.

A corrective request erases its flagged records exactly (like an erasure) and keeps them in
the corrections store (`.oblivio/corrections/<request>.parquet`): manipulated records are
evidence, not personal data to forget, and SSD needs them each time a shard is retrained.
Every time models are published, every stored correction is applied to every shard with
importances recomputed for the current weights; alpha and lambda are chosen once per shard
on held-out data (the largest correction within `unlearning.ssd_tolerance`) and recorded in
`<request>.json`, so an unrelated erasure later never brings the poison back.

The SISA checkpoints stay undampened: they are the exact-training memo table; the dampened
weights are what `models/` publishes and the registry serves.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from oblivio.data.columns import SUBJECT_KEY
from oblivio.keys import keyed_int
from oblivio.unlearning.ssd import SsdChoice, apply_ssd, choose_ssd, diagonal_importance


def store_flagged(store: Path, request_id: str, rows: pd.DataFrame) -> None:
    """Keep a corrective request's flagged rows (written once; a retry keeps the first copy)."""
    path = store / f"{request_id}.parquet"
    if path.exists() or rows.empty:
        return
    store.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp)
    tmp.replace(path)


def corrections(store: Path) -> list[str]:
    return sorted(p.stem for p in store.glob("*.parquet")) if store.exists() else []


def validation_split(holdout: pd.DataFrame, secret: bytes) -> pd.DataFrame:
    """Half of the held-out people (by keyed hash): SSD is chosen on them, never on all of holdout."""
    keep = holdout[SUBJECT_KEY].map(lambda k: keyed_int(secret, "ssd-validation", k) % 2 == 0)
    return holdout[keep.to_numpy(bool)]


def apply_corrections(model: torch.nn.Module, *, shard: int, train: pd.DataFrame, holdout: pd.DataFrame,
                      store: Path, features: list[str], label: str, labels: list, encode: Callable[[pd.DataFrame], np.ndarray],
                      secret: bytes, tolerance: float) -> list[dict]:
    """Dampen `model` (in place) with every stored correction; returns what each did."""
    requests = corrections(store)
    if not requests:
        return []
    index = {v: i for i, v in enumerate(labels)}

    def arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return (encode(frame[features]),
                frame[label].map(index).to_numpy(np.int64))

    train_x, train_y = arrays(train)
    val_x, val_y = arrays(validation_split(holdout, secret))
    applied = []
    for request_id in requests:
        forget_x, forget_y = arrays(pq.read_table(store / f"{request_id}.parquet").to_pandas())
        choices_path = store / f"{request_id}.json"
        choices = json.loads(choices_path.read_text()) if choices_path.exists() else {}
        if str(shard) not in choices:  # chosen once per shard, then re-applied as recorded
            choice = choose_ssd(model, forget_x=forget_x, forget_y=forget_y, val_x=val_x, val_y=val_y,
                                train_importance=diagonal_importance(model, train_x, train_y), tolerance=tolerance)
            choices[str(shard)] = choice.to_json()
            choices_path.write_text(json.dumps(choices, indent=1, sort_keys=True))
        choice = SsdChoice.from_json(choices[str(shard)])
        # importances of the weights as they are now (a retrained shard has new ones)
        train_imp = diagonal_importance(model, train_x, train_y, batch_size=choice.batch_size, kind=choice.importance)
        forget_imp = diagonal_importance(model, forget_x, forget_y, batch_size=choice.batch_size,
                                         kind=choice.importance)
        report = apply_ssd(model, choice, forget_importance=forget_imp, train_importance=train_imp)
        applied.append({"request_id": request_id, "alpha": choice.alpha, "lam": choice.lam,
                        "applied": choice.applied, "selected": report.n_selected,
                        "forget_accuracy_before": choice.forget_accuracy_before,
                        "forget_accuracy_after": choice.forget_accuracy_after})
    return applied
