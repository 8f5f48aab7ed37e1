"""What each use case returns: frozen dataclasses, one per use case, shared by every face.

`to_dict()` is the JSON contract: exactly what the CLI's `--json` prints and what scripts
parse. The fields named here are the documented, typed part. A result made from a flow's
summary (`from_dict`) also keeps that whole summary in `details` (per-shard figures, purge
counts, ...), and `to_dict()` returns it unchanged, so no key appears or vanishes.
Only hashes and request ids appear: never a raw subject or record id.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="Result")


@dataclass(frozen=True)
class Result:
    """Base: typed fields; `details` is the full summary when the result came from one."""

    details: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        if self.details:
            return dict(self.details)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "details"}

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)} - {"details"}
        return cls(**{k: v for k, v in data.items() if k in names}, details=dict(data))


@dataclass(frozen=True)
class InitResult(Result):
    workspace: str = ""  # the new workspace's absolute path


@dataclass(frozen=True)
class RunResult(Result):
    """One training pipeline run (`oblivio run`)."""

    model_name: str = ""
    model_version: int = 0  # the MLflow registry version this run registered
    promoted: bool = False  # whether it became champion
    decision: str = ""  # why (promoted, blocked by which gates, awaiting approval)
    aliases: list[str] = field(default_factory=list)
    gates: dict[str, Any] = field(default_factory=dict)  # gate name -> {passed, value, limit, ...}
    metrics: dict[str, Any] = field(default_factory=dict)  # accuracy, MIA AUCs, epsilon, ...
    dataset_version: str = ""  # DVC hash of the training data
    slices_trained: int = 0
    slices_reused: int = 0
    seconds: float = 0.0  # the whole call, as a user waits for it; `flow_seconds` the flow alone


@dataclass(frozen=True)
class RequestResult(Result):
    """A deletion request recorded (durably) but not yet processed (`forget` without --wait)."""

    request_ids: list[str] = field(default_factory=list)  # one id: the recorded (or already known) request
    status: str = "pending"
    created: bool = True  # False: an identical request was already recorded
    announced: bool = False  # a running `oblivio serve` was told (it processes within seconds)
    due: str = ""  # ISO date-time by which it must be processed (requests.deadline_days)

    @property
    def request_id(self) -> str:
        return self.request_ids[0]


@dataclass(frozen=True)
class ProcessResult(Result):
    """One deletion batch (`process`, `forget --wait`): what was removed, retrained, certified."""

    status: str = ""  # promoted | applied | nothing to do | rejected | failed
    request_ids: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # [{request_id, reason}]
    records_removed: int = 0
    shards_retrained: list[int] = field(default_factory=list)
    slices_retrained: int = 0
    model_version: int | None = None
    promoted: bool = False
    decision: str = ""
    certificate: dict[str, str] = field(default_factory=dict)  # request id -> certificate path


@dataclass(frozen=True)
class RequestsResult(Result):
    """The ledger's requests (`oblivio requests`): hashes only, each with its due date."""

    requests: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class VerifyResult(Result):
    ok: bool = False  # every check that could run passed
    model_version: int = 0
    alias: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)  # [{check, ok (None: could not run here), detail}]
    replayed: bool | None = None  # the asked replay ran (False: this machine cannot reproduce the numerics)


@dataclass(frozen=True)
class ReviewResult(Result):
    model_name: str = ""
    candidate: dict[str, Any] = field(default_factory=dict)  # the reviewed version's audit and gates
    champion: dict[str, Any] | None = None  # the current champion's, beside it


@dataclass(frozen=True)
class ApproveResult(Result):
    model_version: int = 0
    aliases: list[str] = field(default_factory=list)
    approved_by: str = ""
    approved_at: str = ""


@dataclass(frozen=True)
class ScenarioResult(Result):
    """The corrective route measured on injected manipulated data."""

    scenario: dict[str, Any] = field(default_factory=dict)
    manipulated: int = 0
    flagged: int = 0
    before: dict[str, Any] = field(default_factory=dict)
    exact_only: dict[str, Any] = field(default_factory=dict)
    corrective: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    corrective_seconds: float = 0.0


@dataclass(frozen=True)
class DpAuditResult(Result):
    """The one-run DP audit (`audit-dp`): an empirical lower bound on epsilon beside the accounted one."""

    ok: bool = True  # the lower bound does not exceed the accounted epsilon (or DP is off)
    dp_enabled: bool = False
    unit: str | None = None  # subject | record
    epsilon: float | None = None  # what the accountant reported for the private run
    epsilon_lower: float = 0.0  # the audit's bound for the private run (the non-private one when DP is off)
    non_private_epsilon_lower: float = 0.0  # the same audit without DP: shows the audit has power
    canaries: int = 0
    model_version: int | None = None  # the candidate version the bound was logged on
    seconds: float = 0.0


@dataclass(frozen=True)
class DoctorResult(Result):
    ok: bool = False  # every backend answered with the rights the purge needs
    checks: list[dict[str, Any]] = field(default_factory=list)  # [{backend, ok, detail}]


@dataclass(frozen=True)
class DeployResult(Result):
    deployment: str = ""  # flow/deployment name on the Prefect server
    deployment_id: str = ""
    work_pool: str = ""
    cron: str = ""


@dataclass(frozen=True)
class NumericsResult(Result):
    """This machine's numerics (`oblivio numerics`): can it train and replay in the pinned mode?"""

    mode: str = ""
    description: str = ""  # mode, torch and oneMKL versions, and which CPUs it holds on
    can_honour: bool = False
    problems: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)  # the variables a worker must set


@dataclass(frozen=True)
class CertificateResult(Result):
    """A deletion certificate checked offline (`verify-certificate`)."""

    ok: bool = False
    request_id: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)  # [{check, ok, detail}]
