"""`oblivio verify`: check a registered model against the ledger and the data, from hashes.

Nothing is taken on trust: the shard weights are hashed, the per-slice commitments are
recomputed from the current partitions and compared with the manifest the registry
holds, and every erased key is looked for in the data the commitments cover. With
`replay`, randomly chosen slices are retrained from their parent checkpoints and must
come out bit-identical.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

from oblivio import lineage, numerics, tracking
from oblivio.data.columns import RECORD_KEY, SLICE, SUBJECT_KEY
from oblivio.data.sharding import read_holdout, read_layout, read_shard
from oblivio.ensemble import MANIFEST, Ensemble
from oblivio.errors import IntegrityError, NumericsError, OblivioError
from oblivio.ledger import Ledger
from oblivio.training.sisa import (
    CheckpointStore, Recipe, ShardData, chain_keys, slice_commitments, train_shard, weights_digest,
)
from oblivio.workspace import WorkspaceDir


def _check(checks: list[dict], name: str, ok: bool, detail: str) -> bool:
    checks.append({"check": name, "ok": bool(ok), "detail": detail})
    return ok


def registered_manifest(ws: WorkspaceDir, version: int) -> dict:
    """The manifest inside the registered model's artifacts (not the local copy)."""
    import mlflow

    mlflow.set_tracking_uri(ws.mlflow.tracking_uri)
    mlflow.set_registry_uri(ws.mlflow.registry_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{ws.mlflow.model_name}/{version}", dst_path=tmp)
        return json.loads(next(Path(local).rglob(MANIFEST)).read_text())


def verify(root: Path, *, alias: str = "champion", replay: int = 0) -> dict:
    ws = WorkspaceDir(root)
    checks: list[dict] = []
    version = tracking.alias_version(ws.mlflow, alias)
    if version is None:
        raise OblivioError(f"No model version has the alias {alias!r} in {ws.mlflow.model_name!r}; "
                           "run `oblivio run` first, or name another alias with --alias.")
    tags = tracking.version_info(ws.mlflow, version)["tags"]
    manifest = registered_manifest(ws, version)
    local = json.loads((ws.models_dir / MANIFEST).read_text())
    current_data = lineage.dataset_version(ws.root)
    _check(checks, "data version", tags.get("oblivio.dataset_version") == current_data,
           f"v{version} was trained on {tags.get('oblivio.dataset_version', '?')[:12]}, "
           f"the workspace holds {current_data[:12]}")
    same = [s["weights_sha256"] for s in manifest["shards"]] == [s["weights_sha256"] for s in local["shards"]]
    _check(checks, "registered weights", same, "registry manifest and models/ name the same shard weights"
           if same else "the registered model's shard hashes differ from models/")
    try:
        Ensemble.load(ws.models_dir, verify=True)
        _check(checks, "weights hashes", True, f"{len(local['shards'])} shard files hash to their manifest entries")
    except IntegrityError as err:
        _check(checks, "weights hashes", False, str(err))

    ledger = Ledger(ws.ledger_path)
    try:
        erased_subjects, erased_records = ledger.tombstones(), ledger.record_tombstones()
        promoted = ledger.list(status="promoted")
        certified = [r.id for r in promoted if "request_id" in (ledger.certificate(r.id) or {})]
    finally:
        ledger.close()
    n_slices = manifest["n_slices"]
    layout = read_layout(ws.shards_dir)
    cols = ws.params.data.columns
    mismatched, leaked, misplaced, newest = [], 0, 0, 0
    for entry in manifest["shards"]:
        part = read_shard(ws.shards_dir, entry["index"])
        wrong, grown = _misplaced(part, layout, ws.secret, subject_col=cols.subject_id, record_col=cols.record_id)
        misplaced, newest = misplaced + wrong, newest + grown
        commitments = slice_commitments(tuple(part[RECORD_KEY].tolist()), part[SLICE].to_numpy(), n_slices)
        chain = chain_keys(manifest["recipe_sha256"], entry["shard"], commitments)
        if commitments != entry["commitments"] or chain != entry["chain"]:
            mismatched.append(entry["index"])
        leaked += int(part[SUBJECT_KEY].isin(erased_subjects).sum() + part[RECORD_KEY].isin(erased_records).sum())
    _check(checks, "slice commitments", not mismatched,
           f"recomputed from the data for {len(manifest['shards'])} shards x {n_slices} slices"
           + (f"; mismatch in shard(s) {mismatched}" if mismatched else ": all match the registered manifest"))
    _check(checks, "placement", misplaced == 0 and layout is not None,
           f"every record in the slice its layout ({layout.placement if layout else 'none'}) gives it, or in the "
           f"newest slice, where later arrivals go ({newest} there)" if not misplaced
           else f"{misplaced} record(s) sit in a slice the layout does not give them")
    holdout = read_holdout(ws.holdout_path)
    leaked_holdout = int(holdout[SUBJECT_KEY].isin(erased_subjects).sum() + holdout[RECORD_KEY].isin(erased_records).sum())
    _check(checks, "erased records absent", leaked == 0 and leaked_holdout == 0,
           f"{len(erased_subjects)} erased subject(s), {len(erased_records)} erased record(s): "
           f"{leaked} found in training sets covered by the commitments, {leaked_holdout} in the holdout")
    _check(checks, "certificates", len(certified) == len(promoted),
           f"{len(certified)} of {len(promoted)} promoted request(s) have a certificate")
    if replay:
        _replay(ws, local, replay, checks)
    # a check that could not run here (ok None: replay on a machine of other numerics) fails nothing
    return {"ok": all(c["ok"] is not False for c in checks), "model_version": version, "alias": alias,
            "replayed": replay > 0 and all(c["ok"] is not None for c in checks), "checks": checks}


def _misplaced(part, layout, secret: bytes, *, subject_col: str, record_col: str) -> tuple[int, int]:
    """(records in a slice their layout does not give them, records in the newest slice)."""
    if layout is None or not len(part):
        return 0, 0
    newest = part[SLICE].to_numpy() == layout.slices - 1
    first = [layout.first_slice(secret, s, r) for s, r in zip(part[subject_col].astype(str), part[record_col].astype(str))]
    return int(((part[SLICE].to_numpy() != first) & ~newest).sum()), int(newest.sum())


def replay_stage(data: ShardData, *, recipe: Recipe, shard: str, stage: int, chain: list[str], secret: bytes,
                 store: CheckpointStore) -> bool:
    """Retrain `stage` from its parent checkpoint in a scratch store; same bits as the stored one?"""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = CheckpointStore(Path(tmp))
        if stage > 0:
            scratch.path(shard, chain[stage - 1]).parent.mkdir(parents=True)
            shutil.copy(store.path(shard, chain[stage - 1]), scratch.path(shard, chain[stage - 1]))
        train_shard(data, recipe=recipe, shard=shard, n_slices=len(chain), secret=secret, store=scratch)
        replayed = weights_digest(scratch.load(shard, chain[stage])["model"])
    return replayed == weights_digest(store.load(shard, chain[stage])["model"])


def _replay(ws: WorkspaceDir, manifest: dict, k: int, checks: list[dict]) -> None:
    """Replay under the recipe the manifest records, numerics included; where this machine
    cannot reproduce them, say so instead of reporting a mismatch."""
    from oblivio.shard_training import shard_data

    store = CheckpointStore(ws.checkpoints_dir)
    candidates = [(s["index"], r) for s in manifest["shards"] for r in range(manifest["n_slices"])]
    picked = random.SystemRandom().sample(candidates, min(k, len(candidates)))
    recipe = Recipe(**{**manifest["recipe"], "hidden": tuple(manifest["recipe"]["hidden"])})
    if recipe.numerics is not None:
        try:
            numerics.require(recipe.numerics, "replay")
        except NumericsError as err:
            checks.append({"check": "replay", "ok": None, "detail": str(err)})
            return
    for shard, stage in sorted(picked):
        entry = manifest["shards"][shard]
        data = shard_data(ws, read_shard(ws.shards_dir, shard))
        same = replay_stage(data, recipe=recipe, shard=entry["shard"], stage=stage, chain=entry["chain"],
                            secret=ws.secret, store=store)
        _check(checks, f"replay shard {shard} slice {stage + 1}", same,
               "retrained from its parent checkpoint: bit-identical" if same else "weights differ from the checkpoint")
