"""The DP noise multiplier, calibrated once for the configured budget and pinned for the workspace.

A multiplier that followed the shard sizes would change after every erasure, change the
recipe and retrain every shard; each shard's epsilon is instead accounted from what it trained on.
"""
from __future__ import annotations

import hashlib
import json

from oblivio.errors import IntegrityError
from oblivio.workspace import WorkspaceDir


def dp_batch_size(params) -> int:
    """Expected records (or people) per DP-SGD step: `dp.batch_size`, or `train.batch_size` when 0.

    DP-SGD wants larger batches than plain training (the noise is added once per step, so
    its share of the update shrinks as the batch grows); docs/design.md gives the measurement.
    """
    return params.dp.batch_size or params.train.batch_size


def dp_lr(params) -> float:
    """Learning rate of DP training: `dp.lr`, or `train.lr` when 0."""
    return params.dp.lr or params.train.lr


def _dp_calibration_key(ws: WorkspaceDir) -> str:
    p = ws.params
    inputs = [p.dp.target_epsilon, p.dp.delta, p.dp.accountant, dp_batch_size(p), p.train.epochs_per_slice,
              p.sisa.shards, p.sisa.slices]
    if p.dp.unit != "record":  # record-level calibrations made before subject-level DP stay pinned
        inputs.append(p.dp.unit)
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def calibrate_dp(ws: WorkspaceDir, shard_stages: list[list[int]]) -> dict | None:
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

    sigmas = [calibrate_shard_noise(stages, batch_size=dp_batch_size(p), epochs_per_slice=p.train.epochs_per_slice,
                                    target_epsilon=p.dp.target_epsilon, delta=p.dp.delta, accountant=p.dp.accountant)
              for stages in shard_stages]
    pinned = {"key": key, "noise_multiplier": max(sigmas), "target_epsilon": p.dp.target_epsilon,
              "delta": p.dp.delta, "accountant": p.dp.accountant, "unit": p.dp.unit}
    ws.dp_calibration_path.parent.mkdir(parents=True, exist_ok=True)
    ws.dp_calibration_path.write_text(json.dumps(pinned, indent=1))
    return pinned


def dp_spec(ws: WorkspaceDir):
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
