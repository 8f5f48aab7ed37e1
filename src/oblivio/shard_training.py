"""The training steps: a shard (or the one-model baseline) trained from its last reusable
checkpoint under the workspace's recipe.

Steps take a workspace root and return JSON-able summaries (see `ingestion`).
"""
from __future__ import annotations

from collections.abc import Callable
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from oblivio import numerics
from oblivio.data.columns import RECORD_KEY, SLICE, SUBJECT_KEY
from oblivio.data.sharding import read_shard
from oblivio.dp_calibration import dp_batch_size, dp_lr, dp_spec
from oblivio.encoding_pin import encoder_for
from oblivio.training.sisa import CheckpointStore, Recipe, ShardData, fully_trained, train_shard
from oblivio.workspace import WorkspaceDir

Progress = Callable[[str], None]


def print_progress(message: str) -> None:
    """Progress to stderr: a worker process's stderr is its parent's, so lines reach the terminal."""
    print(message, file=sys.stderr, flush=True)


BASELINE = "baseline"


def shard_name(k: int) -> str:
    return f"shard-{k}"


def recipe_for(ws: WorkspaceDir) -> Recipe:
    p = ws.params
    encoder = encoder_for(ws)
    dp = dp_spec(ws)  # DP training has its own batch size and learning rate (dp.batch_size, dp.lr)
    return Recipe(model=p.train.model, hidden=p.train.hidden, n_inputs=encoder.width, encoding=encoder,
                  n_classes=len(p.data.label_domain), epochs_per_slice=p.train.epochs_per_slice,
                  batch_size=dp_batch_size(p) if dp else p.train.batch_size, lr=dp_lr(p) if dp else p.train.lr,
                  weight_decay=p.train.weight_decay, seed=p.seed, dp=dp, numerics=numerics.current(p.train.numerics))


def published_numerics(ws: WorkspaceDir) -> numerics.Numerics | None:
    """The numerics the published models (and so the checkpoint chains they end) were made under."""
    if not ws.manifest_path.exists():
        return None
    recorded = json.loads(ws.manifest_path.read_text())["recipe"].get("numerics")
    return numerics.Numerics(**recorded) if recorded else None



def label_index(ws: WorkspaceDir, labels: pd.Series) -> np.ndarray:
    domain = {v: i for i, v in enumerate(ws.params.data.label_domain)}
    return labels.map(domain).to_numpy(np.int64)


def shard_data(ws: WorkspaceDir, frame: pd.DataFrame) -> ShardData:
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
    ws = WorkspaceDir(root)
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
    ws = WorkspaceDir(root)
    frames = [read_shard(ws.shards_dir, k) for k in range(ws.params.sisa.shards)]
    data = shard_data(ws, pd.concat(frames, ignore_index=True))
    result = train_shard(data, recipe=recipe_for(ws), shard=BASELINE, n_slices=ws.params.sisa.slices,
                         secret=ws.secret, store=CheckpointStore(ws.checkpoints_dir), progress=progress,
                         label="baseline (1 shard)", resume=resume)
    return result.to_json()
