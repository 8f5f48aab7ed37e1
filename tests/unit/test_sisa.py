"""SISA training: determinism, resume-from-slice, and what a deletion invalidates."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oblivio.training.sisa import (
    CheckpointStore, Recipe, ShardData, chain_keys, fully_trained, slice_commitments, train_shard, weights_digest,
)

SECRET = bytes(range(32))
RECIPE = Recipe(model="mlp", hidden=(16,), n_inputs=6, n_classes=2, epochs_per_slice=2, batch_size=16,
                lr=0.01, weight_decay=0.0, seed=7)
N_SLICES = 3


def make_data(n: int = 120, seed: int = 0) -> ShardData:
    rng = np.random.default_rng(seed)
    keys = sorted(hashlib.sha256(f"r{i}".encode()).hexdigest() for i in range(n))
    slices = np.array([int(k[:8], 16) % N_SLICES for k in keys])
    order = np.lexsort((np.array(keys), slices))
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return ShardData(x=x[order], y=y[order], slices=slices[order], record_keys=tuple(np.array(keys)[order]))


def drop(data: ShardData, index: int) -> ShardData:
    keep = np.arange(len(data.y)) != index
    return ShardData(x=data.x[keep], y=data.y[keep], slices=data.slices[keep],
                     record_keys=tuple(k for i, k in enumerate(data.record_keys) if keep[i]))


def train(data: ShardData, store_dir: Path, **kw):
    return train_shard(data, recipe=RECIPE, shard="shard-0", n_slices=N_SLICES, secret=SECRET,
                       store=CheckpointStore(store_dir), **kw)


def test_same_inputs_give_bit_identical_weights(tmp_path):
    a = train(make_data(), tmp_path / "a")
    b = train(make_data(), tmp_path / "b")
    assert a.weights_sha256 == b.weights_sha256
    assert a.slices_trained == [0, 1, 2]


def test_different_seed_or_secret_changes_weights(tmp_path):
    a = train(make_data(), tmp_path / "a")
    other = train_shard(make_data(), recipe=RECIPE, shard="shard-0", n_slices=N_SLICES, secret=b"\x01" * 32,
                        store=CheckpointStore(tmp_path / "b"))
    assert a.weights_sha256 != other.weights_sha256


def test_a_fully_checkpointed_shard_is_known_from_its_keys_alone(tmp_path):
    """What the cached shards of an erasure report without their features: the same as
    resuming them, and nothing at all once a record is gone."""
    data = make_data()
    trained = train(data, tmp_path)
    resumed = train(data, tmp_path)
    known = fully_trained(data.record_keys, data.slices, recipe=RECIPE, shard="shard-0", n_slices=N_SLICES,
                          store=CheckpointStore(tmp_path))
    assert known is not None and resumed.slices_trained == []
    for field in ("n_records", "commitments", "chain", "slices_trained", "slices_reused", "weights_sha256"):
        assert getattr(known, field) == getattr(resumed, field)
    assert known.weights_sha256 == trained.weights_sha256
    smaller = drop(data, len(data.y) - 1)
    assert fully_trained(smaller.record_keys, smaller.slices, recipe=RECIPE, shard="shard-0", n_slices=N_SLICES,
                         store=CheckpointStore(tmp_path)) is None


def test_untouched_shard_trains_nothing_and_keeps_checkpoint_bytes(tmp_path):
    first = train(make_data(), tmp_path)
    before = {p: p.read_bytes() for p in CheckpointStore(tmp_path).all_checkpoints()}
    again = train(make_data(), tmp_path)
    assert again.slices_trained == [] and again.slices_reused == [0, 1, 2]
    assert again.weights_sha256 == first.weights_sha256
    assert {p: p.read_bytes() for p in CheckpointStore(tmp_path).all_checkpoints()} == before


@pytest.mark.parametrize("target_slice", [0, 1, 2])
def test_deletion_resumes_at_first_affected_slice_and_equals_scratch(tmp_path, target_slice):
    data = make_data()
    train(data, tmp_path / "memo")
    victim = int(np.flatnonzero(data.slices == target_slice)[0])
    reduced = drop(data, victim)
    resumed = train(reduced, tmp_path / "memo")
    scratch = train(reduced, tmp_path / "scratch")
    assert resumed.slices_trained == list(range(target_slice, N_SLICES))
    assert resumed.slices_reused == list(range(target_slice))
    assert resumed.weights_sha256 == scratch.weights_sha256


def test_last_record_of_last_slice_is_covered(tmp_path):
    """The reference SISA code skips trailing rows; here the very last record changes a commitment."""
    data = make_data()
    last = len(data.y) - 1
    assert data.slices[last] == N_SLICES - 1
    before = slice_commitments(data.record_keys, data.slices, N_SLICES)
    reduced = drop(data, last)
    after = slice_commitments(reduced.record_keys, reduced.slices, N_SLICES)
    assert before[:-1] == after[:-1] and before[-1] != after[-1]
    train(data, tmp_path)
    assert train(reduced, tmp_path).slices_trained == [N_SLICES - 1]


def test_every_record_is_in_exactly_one_commitment():
    data = make_data()
    per_slice = [sorted(k for k, s in zip(data.record_keys, data.slices) if s == r) for r in range(N_SLICES)]
    assert sum(len(p) for p in per_slice) == len(data.y)
    expected = [hashlib.sha256("\n".join(p).encode()).hexdigest() for p in per_slice]
    assert slice_commitments(data.record_keys, data.slices, N_SLICES) == expected


def test_chain_keys_depend_on_every_earlier_commitment():
    base = chain_keys("recipe", "shard-0", ["a", "b", "c"])
    changed = chain_keys("recipe", "shard-0", ["a", "B", "c"])
    assert base[0] == changed[0] and base[1] != changed[1] and base[2] != changed[2]
    assert chain_keys("recipe", "shard-1", ["a", "b", "c"])[0] != base[0]


def test_resume_from_scratch_flag_ignores_checkpoints(tmp_path):
    first = train(make_data(), tmp_path)
    forced = train(make_data(), tmp_path, resume=False)
    assert forced.slices_trained == [0, 1, 2]
    assert forced.weights_sha256 == first.weights_sha256


FRESH_PROCESS = """
import sys, json
sys.path.insert(0, {tests!r})
from unit.test_sisa import make_data, train
from pathlib import Path
print(json.dumps(train(make_data(), Path({store!r})).weights_sha256))
"""


def test_fresh_process_reproduces_the_weights_and_resumes_a_foreign_checkpoint(tmp_path):
    """A checkpoint written by one process and resumed by another gives the same final bits."""
    in_process = train(make_data(), tmp_path / "here").weights_sha256
    tests_dir = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS.format(tests=tests_dir, store=str(tmp_path / "there"))],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == in_process
    # delete the last stage there and resume it here
    store = CheckpointStore(tmp_path / "there")
    chain = chain_keys(RECIPE.digest(), "shard-0", slice_commitments(make_data().record_keys, make_data().slices, N_SLICES))
    store.path("shard-0", chain[-1]).unlink()
    resumed = train(make_data(), tmp_path / "there")
    assert resumed.slices_trained == [2] and resumed.weights_sha256 == in_process


def test_weights_digest_sees_a_single_bit():
    state = {"w": torch.zeros(4), "b": torch.ones(2)}
    flipped = {"w": torch.tensor([0.0, 0.0, 0.0, float(np.nextafter(np.float32(0), np.float32(1)))]), "b": torch.ones(2)}
    assert weights_digest(state) != weights_digest(flipped)
