"""Promotion gates: each one a small function with one verdict.

A gate reads the audit of the candidate (and the champion's, if any) and answers
`{passed, value, threshold}`, or None when it does not apply (no DP report, no champion
yet, ...). Gates are registered by name; adding one is adding a function here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from oblivio.config import GateParams


@dataclass(frozen=True)
class GateResult:
    passed: bool
    value: float | None  # what was measured
    threshold: float | None  # what it was held against
    detail: str  # one line a reviewer can read

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AuditContext:
    metrics: dict  # the candidate's audit (accuracy, epsilon, mia figures, ...)
    champion: dict | None  # the current champion's metrics, if there is one
    gates: GateParams


TOLERANCE = 1e-9  # accuracies are ratios of counts: a drop "equal" to the allowance must pass

Gate = Callable[[AuditContext], GateResult | None]
GATES: dict[str, Gate] = {}


def gate(name: str) -> Callable[[Gate], Gate]:
    def register(fn: Gate) -> Gate:
        GATES[name] = fn
        return fn

    return register


@gate("min_accuracy")
def _min_accuracy(ctx: AuditContext) -> GateResult:
    value, threshold = ctx.metrics["accuracy"], ctx.gates.min_accuracy
    passed = value >= threshold - TOLERANCE
    return GateResult(passed, value, threshold, f"held-out accuracy {value:.4f} {'>=' if passed else '<'} {threshold}")


@gate("no_regression")
def _no_regression(ctx: AuditContext) -> GateResult | None:
    if not ctx.champion or "accuracy" not in ctx.champion:
        return None
    delta = ctx.metrics["accuracy"] - ctx.champion["accuracy"]
    threshold = -ctx.gates.max_accuracy_regression
    passed = delta >= threshold - TOLERANCE
    return GateResult(passed, delta, threshold,
                      f"accuracy {delta:+.4f} vs champion ({ctx.champion['accuracy']:.4f}); allowed drop {-threshold}")


def _upper_bound(value: float | None, threshold: float, what: str) -> GateResult | None:
    if value is None:
        return None
    passed = value <= threshold + TOLERANCE
    return GateResult(passed, value, threshold, f"{what} {value:.4f} {'<=' if passed else '>'} {threshold}")


@gate("max_mia_auc")
def _max_mia_auc(ctx: AuditContext) -> GateResult | None:
    return _upper_bound(ctx.metrics.get("mia", {}).get("max_auc"), ctx.gates.max_mia_auc,
                        "worst membership-inference AUC (ensemble and shard models)")


@gate("max_mia_tpr_at_1pct_fpr")
def _max_mia_tpr(ctx: AuditContext) -> GateResult | None:
    return _upper_bound(ctx.metrics.get("mia", {}).get("max_tpr_at_1pct_fpr"),
                        ctx.gates.max_mia_tpr_at_1pct_fpr, "worst attack TPR at 1% FPR")


@gate("max_forget_set_auc")
def _max_forget_set_auc(ctx: AuditContext) -> GateResult | None:
    """Erased rows must score like non-members.

    The test's unit is the person: one person's rows are correlated, and whether one
    person scores above the held-out crowd says more about how typical they are than
    about memorisation. So the gate applies from `min_forget_set_subjects` erased people
    on, and then fails only when even the interval's lower end (people resampled) is
    above the threshold. Below that, the AUC is still reported, and exactness of the
    erasure rests on the retraining proof (`oblivio verify`), not on this statistic.
    """
    mia = ctx.metrics.get("mia", {})
    if "forget_set_auc" not in mia or mia.get("forget_set_subjects", 0) < ctx.gates.min_forget_set_subjects:
        return None
    low, value, threshold = mia["forget_set_auc_low"], mia["forget_set_auc"], ctx.gates.max_forget_set_auc
    passed = low <= threshold + TOLERANCE
    return GateResult(passed, value, threshold,
                      f"erased rows ({mia['forget_set_size']} of {mia['forget_set_subjects']} people) vs held-out "
                      f"people: attack AUC {value:.4f}, 95% interval from {low:.4f} {'<=' if passed else '>'} "
                      f"{threshold}")


@gate("max_epsilon")
def _max_epsilon(ctx: AuditContext) -> GateResult | None:
    dp = ctx.metrics.get("dp", {})
    unit = dp.get("unit", "record")  # the unit DP was configured at: per person, or per record
    return _upper_bound(dp.get(f"{unit}_epsilon"), ctx.gates.max_epsilon, f"{unit}-level DP epsilon")


def evaluate_gates(ctx: AuditContext) -> dict[str, GateResult]:
    """Every applicable gate's verdict, by name."""
    results = {name: fn(ctx) for name, fn in GATES.items()}
    return {name: r for name, r in results.items() if r is not None}


def all_passed(results: dict[str, GateResult]) -> bool:
    return all(r.passed for r in results.values())
