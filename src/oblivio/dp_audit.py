"""`oblivio audit-dp`: an empirical lower bound ε̂ beside the accountant's ε, from one run.

On a scratch copy of the workspace's data (never the workspace itself), m canaries are
added, each included with probability 1/2: synthetic people with one mislabelled, outlying
record each, so the guarantee they test is the same at either `dp.unit`. The scratch
workspace trains with the workspace's own recipe; every canary, included or not, is then
scored by offline RMIA against the shard model its person would be placed in, with the
other shard models as references; `audit.one_run` turns the guesses into ε̂ at the
configured δ. The same canaries are audited once more with DP off, which shows the audit
has the power to see leakage where there is some. ε̂ > ε means the accounting or the
training is broken: the command fails loudly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from oblivio.audit.mia import rmia_offline_scores, true_label_log_prob
from oblivio.audit.one_run import audit_scores
from oblivio.data.sharding import is_holdout, shard_of
from oblivio.data.sources import load_source
from oblivio.ensemble import Ensemble
from oblivio.errors import IntegrityError, OblivioError
from oblivio.keys import keyed_hash, keyed_int
from oblivio.ingestion import drop_tombstoned, limit_subjects, tombstones
from oblivio.workspace import WorkspaceDir

CANARY_SCALE = (3.0, 6.0)  # canary features: a real record's, each scaled by a factor in this range


def source_table(root: Path) -> pd.DataFrame:
    """The workspace's data as ingest would read it: sampled as configured, erased people out."""
    ws = WorkspaceDir(root)
    cols = ws.params.data.columns
    df = load_source(ws.params.data.source, ws.root)
    if ws.params.data.limit_subjects:
        df = limit_subjects(df, cols.subject_id, ws.params.data.limit_subjects, ws.secret)
    subjects, records = tombstones(ws)
    return drop_tombstoned(df, ws, subjects=subjects, records=records)[0]


def make_canaries(table: pd.DataFrame, *, scratch: WorkspaceDir, m: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """(m canary rows, whether each is included), every canary on the training side of the split.

    A canary is a new person with one record: a real record's features, scaled away from the
    data, and the other label. Ids continue the table's (integers stay integers).
    """
    require_canaries(m)
    p = scratch.params
    cols = p.data.columns
    rng = np.random.default_rng(seed)
    rows = table.iloc[rng.integers(0, len(table), 4 * m)].reset_index(drop=True)
    subject_ids = _new_ids(table[cols.subject_id], 4 * m, "canary-person-")
    keep = [i for i, s in enumerate(subject_ids) if not is_holdout(scratch.secret, str(s), p.data.holdout_fraction)][:m]
    if len(keep) < m:
        raise OblivioError("Too few canary ids fall on the training side; lower data.holdout_fraction.")
    canaries = rows.iloc[keep].reset_index(drop=True).copy()
    canaries[cols.subject_id] = [subject_ids[i] for i in keep]
    canaries[cols.record_id] = _new_ids(table[cols.record_id], m, "canary-record-")
    features = list(cols.features)
    scale = rng.uniform(*CANARY_SCALE, size=(m, 1))
    scaled = canaries[features].to_numpy(np.float64) * scale
    for i, name in enumerate(features):  # whole columns replaced: integer features become floats
        canaries[name] = scaled[:, i]
    domain = list(p.data.label_domain)
    canaries[cols.label] = [domain[(domain.index(v) + 1) % len(domain)] for v in canaries[cols.label]]
    return canaries, rng.random(m) < 0.5


def require_canaries(m: int) -> None:
    if m < 10:
        raise OblivioError(f"--canaries must be at least 10 (got {m}): fewer guesses cannot bound epsilon.")


def _new_ids(existing: pd.Series, n: int, prefix: str) -> list:
    if pd.api.types.is_integer_dtype(existing):
        start = int(existing.max()) + 1_000_000
        return list(range(start, start + n))
    return [f"{prefix}{i}" for i in range(n)]


def with_canaries(table: pd.DataFrame, canaries: pd.DataFrame, included: np.ndarray) -> pd.DataFrame:
    return pd.concat([table, canaries[included]], ignore_index=True)


def canary_scores(root: Path, canaries: pd.DataFrame) -> np.ndarray:
    """Offline RMIA score of each canary against the shard model its person is placed in."""
    ws = WorkspaceDir(root)
    p = ws.params
    cols = p.data.columns
    ensemble = Ensemble.load(ws.models_dir)
    logits = ensemble.shard_logits(ensemble.featurize(canaries[list(cols.features)].to_numpy(np.float64)))
    index = {v: i for i, v in enumerate(p.data.label_domain)}
    y = canaries[cols.label].map(index).to_numpy(np.int64)
    log_p = np.stack([true_label_log_prob(lg, y) for lg in logits], axis=1)  # (m, S)
    target = np.array([shard_of(ws.secret, str(s), p.sisa.shards) for s in canaries[cols.subject_id]])
    rows = np.arange(len(canaries))
    others = np.stack([np.delete(log_p[i], target[i]) for i in rows])
    return rmia_offline_scores(target_log_prob=log_p[rows, target], reference_log_probs=others)


def audit(root: Path, canaries: pd.DataFrame, included: np.ndarray, *, delta: float) -> dict:
    return audit_scores(canary_scores(root, canaries), included, delta=delta).to_json()


def epsilon_of_run(root: Path) -> tuple[str, float]:
    """(unit, ε) the scratch run's accountant reported."""
    metrics = json.loads((WorkspaceDir(root).reports_dir / "metrics.json").read_text())
    dp = metrics["dp"]
    return dp["unit"], float(dp[f"{dp['unit']}_epsilon"])


def record(root: Path, result: dict) -> int | None:
    """Log ε̂ beside ε on the workspace's candidate version (tag and report line); its number."""
    from oblivio import tracking

    ws = WorkspaceDir(root)
    cfg = ws.mlflow
    version = tracking.alias_version(cfg, cfg.candidate_alias)
    if version is None:
        return None
    info = tracking.version_info(cfg, version)
    line = (f"\n\n**Empirical DP audit** (`oblivio audit-dp`, one run, {result['canaries']} canaries, "
            f"{result['confidence']:.0%} confidence): epsilon lower bound {result['epsilon_lower']:.4g} "
            f"beside the accountant's {result['unit']}-level epsilon {result['epsilon']:.4g}"
            + (f"; without DP the same audit finds {result['non_private_epsilon_lower']:.4g}"
               if result.get("non_private_epsilon_lower") is not None else "")
            + (" — **the bound exceeds epsilon: the accounting or the training is wrong**" if not result["ok"] else "."))
    description = (info["description"] or "").split("\n\n**Empirical DP audit**")[0] + line
    tracking.version_tags(cfg, version, {"oblivio.dp_audit": json.dumps(result, sort_keys=True)},
                          description=description)
    return version


def scratch_workspace(ws: WorkspaceDir, root: Path, *, secret: str, dp_enabled: bool) -> WorkspaceDir:
    """A fresh workspace on the scratch table (`root.parent / table.parquet`), with `ws`'s params, DP on or off."""
    import os

    import yaml

    from oblivio.workspace import init_workspace

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # each scratch copy tracks in its own store
        os.environ.pop(name, None)
    sc = init_workspace(root)
    sc.secret_path.write_text(secret)
    params = yaml.safe_load((ws.root / "params.yaml").read_text())
    params["data"]["source"] = str(root.parent / "table.parquet")
    params["data"]["limit_subjects"] = 0  # the scratch table is already the sample
    params.setdefault("dp", {})["enabled"] = dp_enabled
    params.setdefault("report", {})["baseline"] = False
    (sc.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sc = WorkspaceDir(sc.root)
    _ = sc.params
    return sc


def require_sound(result: dict) -> None:
    if not result["ok"]:
        raise IntegrityError(f"The empirical lower bound epsilon {result['epsilon_lower']:.4g} exceeds the "
                             f"accounted epsilon {result['epsilon']:.4g}: DP accounting or training is broken. "
                             "Do not trust this recipe's epsilon; report it as a bug.")


def seeds(secret: bytes, seed: int) -> int:
    """The canary draw's seed: from the workspace secret, so inclusion is not guessable."""
    return keyed_int(secret, "dp-audit", seed) >> 1


def scratch_secret(secret: bytes, seed: int) -> str:
    """The scratch copies' secret (hex): derived, so an audit is reproducible, and one-way, so
    the scratch files never hold the workspace's own secret."""
    return keyed_hash(secret, "dp-audit-scratch", seed) + "\n"
