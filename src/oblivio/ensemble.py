"""The SISA ensemble: shard models loaded from a published models directory.

`models/manifest.json` names the recipe, the shards, their slice commitments and the
hash of each shard's weights; `models/shard-K.pt` holds the weights (state dicts only,
loaded with `weights_only=True`, never unpickled code). The same class serves the
pipeline's audits and the MLflow pyfunc model.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from oblivio.numerics import enter_torch
from oblivio.training.nets import build_model, featurize
from oblivio.training.sisa import Recipe, weights_digest

MANIFEST = "manifest.json"  # the name WorkspaceDir.manifest_path uses too


def shard_file(k: int) -> str:
    return f"shard-{k}.pt"


@dataclass
class Ensemble:
    recipe: Recipe
    features: tuple[str, ...]
    aggregation: str
    models: list[torch.nn.Module]
    digests: tuple[str, ...]  # each model's weights hash, as the manifest records it

    @classmethod
    def load(cls, models_dir: Path, *, verify: bool = True) -> "Ensemble":
        manifest = json.loads((models_dir / MANIFEST).read_text())
        recipe = Recipe(**{**manifest["recipe"], "hidden": tuple(manifest["recipe"]["hidden"])})
        models = []
        for entry in manifest["shards"]:
            state = torch.load(models_dir / shard_file(entry["index"]), weights_only=True)
            if verify and weights_digest(state) != entry["weights_sha256"]:
                from oblivio.errors import IntegrityError

                raise IntegrityError(
                    f"{models_dir / shard_file(entry['index'])} does not match the weights hash in its manifest. "
                    "The models directory was modified; run `oblivio run` to rebuild it."
                )
            model = build_model(recipe.model, n_inputs=recipe.n_inputs, hidden=recipe.hidden,
                                n_classes=recipe.n_classes, seed=0)
            model.load_state_dict(state)
            model.eval()
            models.append(model)
        return cls(recipe, tuple(manifest["features"]), manifest["aggregation"], models,
                   tuple(entry["weights_sha256"] for entry in manifest["shards"]))

    def featurize(self, raw: pd.DataFrame | np.ndarray) -> torch.Tensor:
        """Model inputs of raw rows: the recipe's encoder on a frame of raw columns, or on a matrix
        of them in feature order (a recipe without an encoder, from before them, takes the matrix)."""
        if self.recipe.encoding is not None:
            if not isinstance(raw, pd.DataFrame):  # a matrix of the feature columns, in their order
                raw = pd.DataFrame(np.asarray(raw), columns=self.recipe.encoding.names)
            return torch.from_numpy(self.recipe.encoding.transform(raw))
        return torch.from_numpy(featurize(np.asarray(raw, dtype=np.float64), self.recipe.model))

    @torch.no_grad()
    def model_logits(self, k: int, x: torch.Tensor) -> np.ndarray:
        """(n, n_classes) float64 logits of shard model k."""
        enter_torch()
        return self.models[k](x).double().numpy()

    def shard_logits(self, x: torch.Tensor) -> np.ndarray:
        """(n_shards, n, n_classes) float64 logits of every shard model."""
        return np.stack([self.model_logits(k, x) for k in range(len(self.models))])

    def predict_proba(self, raw: pd.DataFrame | np.ndarray) -> np.ndarray:
        return aggregate(self.shard_logits(self.featurize(raw)), self.aggregation)


class AuditCache:
    """The model inputs of a data file's rows, and each shard model's logits on them, kept
    from one audit to the next.

    `oblivio serve` audits after every erasure, and an erasure rewrites a partition or two
    and retrains their shards: the other files, the other models, and so their logits, are
    unchanged. Inputs are keyed by the file's content hash, the rows taken from it and the
    featurization; logits also by the model's weights hash, so a changed file or model is
    never answered from here. After each audit only the entries it used are kept
    (`keep_only_used`): nothing of erased rows outlives the audit that follows their erasure.
    """

    def __init__(self) -> None:
        self._kept: dict = {}
        self._used: dict = {}

    def scored(self, path: Path, rows: str, ensemble: Ensemble, read: Callable[[], tuple[np.ndarray, np.ndarray]]
               ) -> tuple[np.ndarray, np.ndarray]:
        """(label indices, logits (n_shards, n, n_classes)) of the rows `read()` gives as (raw features,
        label indices); `rows` names which rows of the file those are."""
        key, x, labels = self._inputs(path, rows, ensemble, read)
        return labels, np.stack([self._entry((*key, digest), lambda k=k: ensemble.model_logits(k, x))
                                 for k, digest in enumerate(ensemble.digests)])

    def inputs(self, path: Path, rows: str, ensemble: Ensemble, read: Callable[[], tuple[np.ndarray, np.ndarray]]
               ) -> tuple[torch.Tensor, np.ndarray]:
        """(model inputs, label indices) of the rows, as `scored` reads them: for a model outside the ensemble."""
        return self._inputs(path, rows, ensemble, read)[1:]

    def _inputs(self, path: Path, rows: str, ensemble: Ensemble, read: Callable
                ) -> tuple[tuple, torch.Tensor, np.ndarray]:
        with open(path, "rb") as f:
            key = (hashlib.file_digest(f, "sha256").hexdigest(), rows, ensemble.recipe.model,
                   json.dumps(ensemble.recipe.encoding.to_json()) if ensemble.recipe.encoding else None)
        x, labels = self._entry(key, lambda: _featurized(ensemble, *read()))
        return key, x, labels

    def _entry(self, key: tuple, make: Callable):
        if key not in self._kept:
            self._kept[key] = make()
        self._used[key] = self._kept[key]
        return self._used[key]

    def keep_only_used(self) -> None:
        self._kept, self._used = self._used, {}


def _featurized(ensemble: Ensemble, raw: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    return ensemble.featurize(raw), labels


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def aggregate(shard_logits: np.ndarray, how: str) -> np.ndarray:
    """Ensemble class probabilities: mean of shard probabilities, or share of shard votes."""
    if how == "majority_vote":
        votes = shard_logits.argmax(axis=-1)
        n_classes = shard_logits.shape[-1]
        return np.stack([(votes == c).mean(axis=0) for c in range(n_classes)], axis=-1)
    return softmax(shard_logits).mean(axis=0)
