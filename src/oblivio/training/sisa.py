"""SISA training as content-addressed memoisation.

A shard trains in R stages; stage r sees slices 0..r. The checkpoint after stage r is
stored under a *chain key*: the hash of the recipe, the shard, and the commitment of
every slice seen so far (a commitment is the hash of the sorted keyed record hashes of
one slice). Training a shard is then "for each stage, reuse the checkpoint whose key
exists, else train from the previous one". Erasing a record changes the commitment of
its slice and so every key from that stage on: the shard resumes at the first affected
slice, and an untouched shard finds all its keys and trains nothing. Crash recovery is
the same rule.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from oblivio import numerics
from oblivio.data.encoding import Encoder
from oblivio.faults import crash_point
from oblivio.keys import derive_seed
from oblivio.training.dp import DpSpec, DpTrainer, epsilon_of
from oblivio.training.nets import build_model

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """Everything besides the data that determines a shard's weights, bit for bit."""

    model: str
    hidden: tuple[int, ...]
    n_inputs: int
    n_classes: int
    epochs_per_slice: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    dp: DpSpec | None = None  # DP-SGD (Opacus) when set; see oblivio.training.dp
    numerics: numerics.Numerics | None = None  # the kernels and library versions the bits depend on; see oblivio.numerics
    encoding: Encoder | None = None  # raw columns -> inputs (oblivio.data.encoding); None: inputs given as is

    def __post_init__(self):
        if isinstance(self.dp, dict):  # a recipe read back from JSON (a models manifest)
            object.__setattr__(self, "dp", DpSpec(**self.dp))
        if isinstance(self.numerics, dict):
            object.__setattr__(self, "numerics", numerics.Numerics(**self.numerics))
        if isinstance(self.encoding, dict):
            object.__setattr__(self, "encoding", Encoder.from_json(self.encoding))

    def digest(self) -> str:
        fields = dataclasses.asdict(self)
        for optional in ("dp", "numerics", "encoding"):
            if fields[optional] is None:
                del fields[optional]  # recipes without it keep the digests (and checkpoint keys) they had before it
        if fields.get("dp") is not None and fields["dp"]["unit"] == "record":
            del fields["dp"]["unit"]  # record-level DP recipes keep the digests they had before subject-level DP
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(f"oblivio-recipe-v1\n{blob}".encode()).hexdigest()


@dataclass(frozen=True)
class ShardData:
    """One shard's training rows, already featurized, ordered by (slice, record key)."""

    x: np.ndarray  # float32 (n, n_inputs)
    y: np.ndarray  # int64 (n,)
    slices: np.ndarray  # int64 (n,), the slice of each row
    record_keys: tuple[str, ...]  # keyed record hashes, one per row
    subjects: np.ndarray | None = None  # int64 (n,): the person of each row (rank of their keyed hash)


def slice_commitments(record_keys: tuple[str, ...], slices: np.ndarray, n_slices: int) -> list[str]:
    """Per slice: sha256 over the sorted keyed hashes of its records (empty slice included)."""
    out = []
    for r in range(n_slices):
        members = sorted(k for k, s in zip(record_keys, slices) if s == r)
        out.append(hashlib.sha256("\n".join(members).encode()).hexdigest())
    return out


def chain_keys(recipe_digest: str, shard: str, commitments: list[str]) -> list[str]:
    keys, prev = [], hashlib.sha256(f"{recipe_digest}\n{shard}".encode()).hexdigest()
    for commitment in commitments:
        prev = hashlib.sha256(f"{prev}\n{commitment}".encode()).hexdigest()
        keys.append(prev)
    return keys


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names and raw bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class CheckpointStore:
    """Slice checkpoints on disk, `ROOT/<shard>/<chain key>.pt`; writes are atomic."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, shard: str, key: str) -> Path:
        return self.root / shard / f"{key}.pt"

    def has(self, shard: str, key: str) -> bool:
        return self.path(shard, key).exists()

    def save(self, shard: str, key: str, payload: dict) -> None:
        path = self.path(shard, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    def load(self, shard: str, key: str) -> dict:
        # from disk, so the optimizer never shares tensors with a cached copy
        return torch.load(self.path(shard, key), weights_only=True)

    def all_checkpoints(self) -> list[Path]:
        return sorted(self.root.glob("*/*.pt")) if self.root.exists() else []

    def remove_all_but(self, keep: set[Path]) -> list[Path]:
        """Delete every checkpoint not in `keep` (stale ones may hold erased records)."""
        removed = [p for p in self.all_checkpoints() if p not in keep]
        for p in removed:
            p.unlink()
        for tmp in self.root.glob("*/.*.tmp") if self.root.exists() else []:
            tmp.unlink()
            removed.append(tmp)
        return removed


@dataclass
class ShardResult:
    shard: str
    n_records: int
    commitments: list[str]  # one per slice
    chain: list[str]  # checkpoint key after each stage
    slices_trained: list[int] = field(default_factory=list)
    slices_reused: list[int] = field(default_factory=list)
    weights_sha256: str = ""
    seconds: float = 0.0
    # DP only: epsilon spent by the shard's worst-case record (a slice-0 record, sampled in every
    # stage) at recipe.dp.delta, from recipe.dp.accountant, or with dp.unit subject by its worst-case
    # person (one seen from stage 0 on); and the history it was computed from
    epsilon: float | None = None
    dp_history: list[list[float]] | None = None  # [noise multiplier, sample rate, steps] per phase

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _train_stage(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                 recipe: Recipe, secret: bytes, shard: str, stage: int) -> None:
    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    model.train()
    for epoch in range(recipe.epochs_per_slice):
        # one generator per (shard, stage, epoch): resuming at any stage replays the same order
        gen = torch.Generator().manual_seed(derive_seed(secret, recipe.seed, "shuffle", shard, stage, epoch))
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()


def new_model(recipe: Recipe, secret: bytes, shard: str) -> nn.Module:
    return build_model(recipe.model, n_inputs=recipe.n_inputs, hidden=recipe.hidden, n_classes=recipe.n_classes,
                       seed=derive_seed(secret, recipe.seed, "init", shard))


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def train_shard(data: ShardData, *, recipe: Recipe, shard: str, n_slices: int, secret: bytes,
                store: CheckpointStore, progress: Progress | None = None, label: str = "",
                resume: bool = True) -> ShardResult:
    """Train (or resume) one shard through all R stages; returns what was trained and reused.

    `resume=False` ignores existing checkpoints (the from-scratch reference an erasure is
    measured against); it rewrites them with identical bits.
    """
    if recipe.numerics is not None:
        numerics.require(recipe.numerics, f"train {shard}")
    numerics.enter_torch()  # one thread: bits match across processes, and 2 cores are not oversubscribed
    began = time.perf_counter()
    commitments = slice_commitments(data.record_keys, data.slices, n_slices)
    chain = chain_keys(recipe.digest(), shard, commitments)
    result = ShardResult(shard=shard, n_records=len(data.y), commitments=commitments, chain=chain)
    done = max((r for r in range(n_slices) if resume and store.has(shard, chain[r])), default=-1)
    model = new_model(recipe, secret, shard)
    optimizer = _optimizer(model, recipe)
    dp_history: list = []
    if done >= 0:
        state = store.load(shard, chain[done])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if recipe.dp is not None:
            dp_history = state["accountant"]  # the recipe digest is in the key: a DP key has a DP checkpoint
    result.slices_reused = list(range(done + 1))
    if recipe.dp is not None and recipe.dp.unit == "subject" and data.subjects is None:
        raise ValueError("subject-level DP needs ShardData.subjects")
    subjects_all = torch.from_numpy(np.array(data.subjects, dtype=np.int64)) if data.subjects is not None else None
    x_all = torch.from_numpy(np.array(data.x, dtype=np.float32))
    y_all = torch.from_numpy(np.array(data.y, dtype=np.int64))
    trainer = None
    if recipe.dp is not None and done + 1 < n_slices:
        trainer = DpTrainer(model, optimizer, recipe.dp, dp_history)
    for stage in range(done + 1, n_slices):
        seen = torch.from_numpy(np.flatnonzero(data.slices <= stage))
        if trainer is None:
            _train_stage(model, optimizer, x_all[seen], y_all[seen], recipe=recipe, secret=secret, shard=shard, stage=stage)
        else:
            # sampling and noise streams per (shard, stage, epoch): resuming at any stage replays the same bits
            trainer.train_stage(x_all[seen], y_all[seen], batch_size=recipe.batch_size, epochs=recipe.epochs_per_slice,
                                seed_for=lambda stream, epoch, stage=stage: derive_seed(
                                    secret, recipe.seed, stream, shard, stage, epoch),
                                subjects=subjects_all[seen] if subjects_all is not None else None)
            dp_history = trainer.history()
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "stage": stage}
        if trainer is not None:
            payload["accountant"] = dp_history  # [[sigma, q, steps], ...] over all stages so far
        store.save(shard, chain[stage], payload)
        crash_point("train:checkpoint-saved")
        result.slices_trained.append(stage)
        if progress:
            progress(f"{label or shard}: slice {stage + 1}/{n_slices} trained on {len(seen)} records")
    if not result.slices_trained and progress:
        progress(f"{label or shard}: all {n_slices} slices reused from checkpoints")
    if trainer is not None:
        trainer.close()
    return _seal(result, model.state_dict(), dp_history, recipe, began)


def fully_trained(record_keys: tuple[str, ...], slices: np.ndarray, *, recipe: Recipe, shard: str, n_slices: int,
                  store: CheckpointStore, progress: Progress | None = None, label: str = "") -> ShardResult | None:
    """What `train_shard` returns for a shard whose last stage is checkpointed, from its
    record keys alone; None when any stage must train.

    An erasure touches one shard or two: the others need no features read or featurized.
    """
    began = time.perf_counter()
    commitments = slice_commitments(record_keys, slices, n_slices)
    chain = chain_keys(recipe.digest(), shard, commitments)
    if not store.has(shard, chain[-1]):
        return None
    state = store.load(shard, chain[-1])
    result = ShardResult(shard=shard, n_records=len(record_keys), commitments=commitments, chain=chain,
                         slices_reused=list(range(n_slices)))
    if progress:
        progress(f"{label or shard}: all {n_slices} slices reused from checkpoints")
    return _seal(result, state["model"], state.get("accountant", []), recipe, began)


def _seal(result: ShardResult, weights: dict[str, torch.Tensor], dp_history: list, recipe: Recipe,
          began: float) -> ShardResult:
    """Add the weights' hash, the DP accounting (if any) and the time spent."""
    result.weights_sha256 = weights_digest(weights)
    if recipe.dp is not None:
        result.dp_history = [list(h) for h in dp_history]
        result.epsilon = epsilon_of(dp_history, delta=recipe.dp.delta, accountant=recipe.dp.accountant)
    result.seconds = time.perf_counter() - began
    return result


def load_final_model(recipe: Recipe, secret: bytes, shard: str, store: CheckpointStore, final_key: str) -> nn.Module:
    model = new_model(recipe, secret, shard)
    model.load_state_dict(store.load(shard, final_key)["model"])
    model.eval()
    return model
