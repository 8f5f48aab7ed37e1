"""AuditCache: inputs and logits kept between audits must equal recomputing them, whatever changed."""
from __future__ import annotations

import numpy as np
import pytest

from oblivio.ensemble import AuditCache, Ensemble
from oblivio.training.nets import build_model
from oblivio.training.sisa import Recipe, weights_digest

RECIPE = Recipe(model="mlp", hidden=(5,), n_inputs=6, n_classes=2, epochs_per_slice=1, batch_size=8, lr=0.01,
                weight_decay=0.0, seed=0)


def ensemble_of(seeds: list[int]) -> Ensemble:
    models = [build_model("mlp", n_inputs=6, hidden=(5,), n_classes=2, seed=s).eval() for s in seeds]
    return Ensemble(RECIPE, ("a", "b", "c"), "mean", models, tuple(weights_digest(m.state_dict()) for m in models))


class CountingEnsemble:
    """Counts the models an audit actually runs."""

    def __init__(self, ensemble: Ensemble, monkeypatch) -> None:
        self.runs: list[int] = []
        original = ensemble.model_logits
        monkeypatch.setattr(ensemble, "model_logits", lambda k, x: self.runs.append(k) or original(k, x))


def rows(path, seed: int):
    data = np.random.default_rng(seed).normal(size=(40, 3))
    path.write_bytes(data.tobytes())  # the cache hashes the file; the reader below gives its rows
    return lambda: (data, (data[:, 0] > 0).astype(np.int64))


def test_kept_logits_equal_recomputed_ones_and_only_changes_are_recomputed(tmp_path, monkeypatch):
    cache, ensemble = AuditCache(), ensemble_of([1, 2, 3])
    counter = CountingEnsemble(ensemble, monkeypatch)
    read_a = rows(tmp_path / "a.bin", 0)
    y, first = cache.scored(tmp_path / "a.bin", "all", ensemble, read_a)
    assert counter.runs == [0, 1, 2]
    np.testing.assert_array_equal(first, ensemble_of([1, 2, 3]).shard_logits(ensemble.featurize(read_a()[0])))
    cache.keep_only_used()

    counter.runs.clear()
    again_y, again = cache.scored(tmp_path / "a.bin", "all", ensemble, lambda: pytest.fail("read although kept"))
    assert counter.runs == [] and (again_y == y).all() and (again == first).all()
    cache.keep_only_used()

    retrained = ensemble_of([1, 9, 3])  # shard 1 retrained: only its logits are new, on the kept inputs
    counter = CountingEnsemble(retrained, monkeypatch)
    _, after = cache.scored(tmp_path / "a.bin", "all", retrained, lambda: pytest.fail("read although unchanged"))
    assert counter.runs == [1]
    np.testing.assert_array_equal(after, ensemble_of([1, 9, 3]).shard_logits(retrained.featurize(read_a()[0])))


def test_a_changed_file_or_other_rows_are_read_again_and_unused_entries_dropped(tmp_path, monkeypatch):
    cache, ensemble = AuditCache(), ensemble_of([1, 2])
    cache.scored(tmp_path / "a.bin", "all", ensemble, rows(tmp_path / "a.bin", 0))
    cache.keep_only_used()
    counter = CountingEnsemble(ensemble, monkeypatch)
    read_changed = rows(tmp_path / "a.bin", 1)  # same path, new content (an erasure rewrote it)
    y, logits = cache.scored(tmp_path / "a.bin", "all", ensemble, read_changed)
    assert counter.runs == [0, 1]
    np.testing.assert_array_equal(logits, ensemble.shard_logits(ensemble.featurize(read_changed()[0])))
    counter.runs.clear()
    cache.scored(tmp_path / "a.bin", "a sample", ensemble, read_changed)
    assert counter.runs == [0, 1], "other rows of the same file are not the cached ones"
    cache.keep_only_used()
    assert len(cache._kept) == 2 * (1 + 2), "the old content's entries must be gone after the audit"
