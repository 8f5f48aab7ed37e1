"""The publish step: the final shard weights, with standing corrections applied, and the
models manifest, written to models/ atomically."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from oblivio.data.sharding import read_holdout, read_shard
from oblivio.ensemble import MANIFEST, shard_file
from oblivio.errors import IntegrityError
from oblivio.shard_training import recipe_for
from oblivio.training.sisa import CheckpointStore, chain_keys, load_final_model, weights_digest
from oblivio.unlearning.corrective import apply_corrections, corrections
from oblivio.workspace import WorkspaceDir


def publish_models(root: Path, shard_results: list[dict]) -> dict:
    """Write models/ (final shard weights + manifest) atomically; returns the manifest.

    Standing corrections (SSD) are applied here, to every shard, every time: the published
    weights are the trained ones dampened by each correction still in force.
    """
    ws = WorkspaceDir(root)
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
