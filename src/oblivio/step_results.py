"""What one step of a flow hands to the next: frozen, typed, hashes and counts only.

The use-case results (results.py) are what a user gets back; these are the core's own
hand-overs between steps (plan → apply → train → register → promote → finish), so a step's
inputs say what they are instead of being dicts whose keys each reader must remember. Each
has `to_dict()`: its JSON form, for the ledger, the flow's summary and the registry report.
Shard results stay the training layer's JSON (`ShardResult.to_json()`), which the manifest
and MLflow already record in that form.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _plain(obj) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@dataclass(frozen=True)
class Resolution:
    """What one request resolved to in the placed data; kept in the ledger for a retry."""

    records: int = 0  # rows removed, training and held-out
    holdout_records: int = 0
    shards: list[int] = field(default_factory=list)  # training shards it touches
    first_slices: dict[str, int] = field(default_factory=dict)  # shard -> first affected slice

    to_dict = _plain

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resolution:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class Rejection:
    request_id: str
    reason: str

    to_dict = _plain


@dataclass(frozen=True)
class Batch:
    """`erasure.plan`: the requests one deletion run honours and where their rows sit."""

    requests: list[str] = field(default_factory=list)  # accepted request ids, in ledger order
    rejected: list[Rejection] = field(default_factory=list)
    per_request: dict[str, Resolution] = field(default_factory=dict)
    first_slice: dict[str, int] = field(default_factory=dict)  # shard -> first slice to retrain from
    holdout_affected: bool = False
    route: str = "none"  # "erasure", "corrective" or both joined by "+"
    records_removed: int = 0
    data_version_before: str = ""  # DVC hash of the training data the requests were resolved against

    def rejected_dicts(self) -> list[dict[str, str]]:
        return [r.to_dict() for r in self.rejected]


@dataclass(frozen=True)
class Applied:
    """`erasure.apply`: which files lost rows."""

    partitions_rewritten: list[int] = field(default_factory=list)  # shard indices; -1 is the holdout
    source_rewritten: bool = False  # a source file kept inside the workspace

    to_dict = _plain


@dataclass(frozen=True)
class RunRecord:
    """What `registry.register` logs for one run: the step summaries of the flow."""

    run_name: str
    trigger: str
    data: dict[str, str]  # DVC hash per versioned output (data/shards, models, ...)
    shards: list[dict[str, Any]]  # each shard's ShardResult JSON
    metrics: dict[str, Any]
    requests: list[str] = field(default_factory=list)  # the deletion batch's request ids, if any


@dataclass(frozen=True)
class Registered:
    """`registry.register`: the new model version, its data and the gates' verdicts."""

    model_version: int
    run_id: str
    dataset_version: str
    n_records: int
    n_subjects: int
    n_shards: int
    n_slices: int
    metrics: dict[str, Any]
    gates: dict[str, dict[str, Any]]  # gate name -> GateResult JSON
    champion_before: int | None = None
    champion_metrics: dict[str, Any] | None = None
    requests: list[str] = field(default_factory=list)

    to_dict = _plain


@dataclass(frozen=True)
class Promotion:
    """`registry.promote`: where the aliases ended up, and why."""

    aliases: list[str]
    promoted: bool  # the version is champion now
    decision: str

    to_dict = _plain


@dataclass(frozen=True)
class Purged:
    """`erasure.purge`: what was deleted beyond the rewritten files."""

    checkpoints_removed: int = 0
    model_versions_deleted: list[int] = field(default_factory=list)
    flow_runs_deleted: int | None = None  # None: no Prefect history was given to purge

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self)
        if self.flow_runs_deleted is None:
            del out["flow_runs_deleted"]
        return out


@dataclass(frozen=True)
class BatchOutcome:
    """Everything a deletion batch did before its purge: what a certificate attests."""

    batch: Batch
    applied: Applied
    shards: list[dict[str, Any]]
    registered: Registered
    promotion: Promotion


@dataclass(frozen=True)
class Finished:
    """`erasure.finish`: one signed certificate per request, and the purge."""

    certificates: dict[str, str]  # request id -> certificate path
    purge: Purged
