"""Promotion gates: verdicts at and around thresholds, and the gate registry."""
from __future__ import annotations

import pytest

from oblivio.audit import gates as gates_module
from oblivio.audit.gates import GATES, AuditContext, GateResult, all_passed, evaluate_gates, gate
from oblivio.config import GateParams

# Thresholds and accuracies below are exact binary fractions, so boundaries are exact.
PARAMS = GateParams(min_accuracy=0.75, max_accuracy_regression=0.125)
BUILT_IN = dict(GATES)  # the registry as this module found it


def ctx(accuracy: float, champion: dict | None = None, params: GateParams = PARAMS) -> AuditContext:
    return AuditContext(metrics={"accuracy": accuracy}, champion=champion, gates=params)


# --- min_accuracy --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("accuracy", "passed"),
    [(0.75, True), (0.7500001, True), (0.7499999, False), (1.0, True), (0.0, False)],
)
def test_min_accuracy_at_and_around_threshold(accuracy: float, passed: bool) -> None:
    result = GATES["min_accuracy"](ctx(accuracy))
    assert result.passed is passed
    assert result.value == accuracy
    assert result.threshold == 0.75
    assert (">=" if passed else "<") in result.detail
    assert f"{accuracy:.4f}" in result.detail


def test_min_accuracy_uses_the_configured_threshold() -> None:
    strict = GateParams(min_accuracy=0.9)
    assert GATES["min_accuracy"](ctx(0.85, params=strict)).passed is False
    assert GATES["min_accuracy"](ctx(0.85, params=GateParams(min_accuracy=0.8))).passed is True


# --- no_regression -------------------------------------------------------------------------

@pytest.mark.parametrize("champion", [None, {}, {"epsilon": 3.0}])
def test_no_regression_does_not_apply_without_a_champion_accuracy(champion) -> None:
    assert GATES["no_regression"](ctx(0.5, champion)) is None
    assert "no_regression" not in evaluate_gates(ctx(0.8, champion))


@pytest.mark.parametrize(
    ("candidate", "champion", "passed", "delta"),
    [
        (0.875, 0.875, True, 0.0),  # same
        (0.9375, 0.875, True, 0.0625),  # better
        (0.8125, 0.875, True, -0.0625),  # worse, within the allowed drop
        (0.75, 0.875, True, -0.125),  # exactly the allowed drop
        (0.6875, 0.875, False, -0.1875),  # beyond it
        (0.5, 0.875, False, -0.375),
    ],
)
def test_no_regression_within_and_beyond_tolerance(candidate, champion, passed, delta) -> None:
    result = GATES["no_regression"](ctx(candidate, {"accuracy": champion}))
    assert result.passed is passed
    assert result.value == delta
    assert result.threshold == -0.125
    assert "vs champion (0.8750)" in result.detail


def test_no_regression_drop_equal_to_decimal_allowance_passes() -> None:
    result = GATES["no_regression"](ctx(0.79, {"accuracy": 0.80}, GateParams(max_accuracy_regression=0.01)))
    assert result.passed is True


def test_no_regression_just_past_the_allowed_drop_fails() -> None:
    result = GATES["no_regression"](ctx(0.75 - 1e-6, {"accuracy": 0.875}))
    assert result.passed is False


# --- evaluate_gates / all_passed ---------------------------------------------------------------

def test_evaluate_gates_without_champion_runs_only_applicable_gates() -> None:
    results = evaluate_gates(ctx(0.8))
    assert set(results) == {"min_accuracy"}
    assert results["min_accuracy"].passed is True
    assert all_passed(results) is True


def test_evaluate_gates_with_champion_runs_both() -> None:
    results = evaluate_gates(ctx(0.8125, {"accuracy": 0.875}))
    assert set(results) == {"min_accuracy", "no_regression"}
    assert all(isinstance(r, GateResult) for r in results.values())
    assert all_passed(results) is True


def test_one_failed_gate_fails_all_passed() -> None:
    # accurate enough, but a regression beyond the allowed drop
    results = evaluate_gates(ctx(0.78125, {"accuracy": 0.96875}))
    assert results["min_accuracy"].passed is True
    assert results["no_regression"].passed is False
    assert all_passed(results) is False
    # below the minimum, even with no champion
    assert all_passed(evaluate_gates(ctx(0.5))) is False


def test_all_passed_on_hand_made_results() -> None:
    ok = GateResult(True, 1.0, 0.5, "ok")
    bad = GateResult(False, 0.1, 0.5, "bad")
    assert all_passed({"a": ok, "b": ok}) is True
    assert all_passed({"a": ok, "b": bad}) is False
    assert all_passed({}) is True


def test_gate_result_to_json() -> None:
    assert GateResult(False, 0.25, 0.5, "too low").to_json() == {
        "passed": False, "value": 0.25, "threshold": 0.5, "detail": "too low",
    }


# --- registry ---------------------------------------------------------------------------------

@pytest.fixture
def clean_registry():
    saved = dict(GATES)
    yield GATES
    GATES.clear()
    GATES.update(saved)


def test_registered_gate_is_included_by_evaluate_gates(clean_registry) -> None:
    seen = []

    @gate("max_epsilon")
    def _max_epsilon(c: AuditContext) -> GateResult | None:
        seen.append(c)
        if "epsilon" not in c.metrics:
            return None
        return GateResult(c.metrics["epsilon"] <= 8.0, c.metrics["epsilon"], 8.0, "epsilon")

    assert clean_registry["max_epsilon"] is _max_epsilon  # the decorator returns the function
    assert gates_module.GATES is clean_registry

    context = AuditContext(metrics={"accuracy": 0.9, "epsilon": 10.0}, champion=None, gates=PARAMS)
    results = evaluate_gates(context)
    assert set(results) == {"min_accuracy", "max_epsilon"}
    assert seen == [context]
    assert results["max_epsilon"].passed is False
    assert all_passed(results) is False

    # a gate answering None is left out
    results = evaluate_gates(AuditContext(metrics={"accuracy": 0.9}, champion=None, gates=PARAMS))
    assert set(results) == {"min_accuracy"}
    assert all_passed(results) is True


def test_registering_under_an_existing_name_replaces_it(clean_registry) -> None:
    @gate("min_accuracy")
    def _always_fails(c: AuditContext) -> GateResult:
        return GateResult(False, None, None, "replaced")

    results = evaluate_gates(ctx(1.0))
    assert results["min_accuracy"].detail == "replaced"
    assert all_passed(results) is False


def test_registry_is_back_to_the_built_in_gates() -> None:
    # runs after the tests above (file order): the fixture restored the registry
    assert GATES == BUILT_IN
    assert {"min_accuracy", "no_regression"} <= set(GATES)


# --- privacy gates ----------------------------------------------------------------------

def _ctx(metrics: dict) -> AuditContext:
    return AuditContext(metrics={"accuracy": 0.8, **metrics}, champion=None, gates=GateParams())


def test_privacy_gates_absent_without_their_audits() -> None:
    names = set(evaluate_gates(_ctx({})))
    assert not names & {"max_mia_auc", "max_mia_tpr_at_1pct_fpr", "max_forget_set_auc", "max_epsilon"}


@pytest.mark.parametrize("auc, passed", [(0.60, True), (0.75, True), (0.7501, False)])
def test_mia_auc_gate_is_an_upper_bound(auc: float, passed: bool) -> None:
    result = evaluate_gates(_ctx({"mia": {"max_auc": auc, "max_tpr_at_1pct_fpr": 0.01}}))
    assert result["max_mia_auc"].passed is passed and result["max_mia_auc"].threshold == 0.75
    assert result["max_mia_tpr_at_1pct_fpr"].passed is True


def test_epsilon_gate_reads_the_record_level_epsilon() -> None:
    assert evaluate_gates(_ctx({"dp": {"record_epsilon": 12.0}}))["max_epsilon"].passed is False
    assert evaluate_gates(_ctx({"dp": {"record_epsilon": 7.9}}))["max_epsilon"].passed is True


def test_epsilon_gate_reads_the_configured_unit() -> None:
    """Subject level: the per-person epsilon decides, not the record-level figure beside it."""
    subject = {"unit": "subject", "subject_epsilon": 7.9, "record_epsilon": 15.8}
    result = evaluate_gates(_ctx({"dp": subject}))["max_epsilon"]
    assert result.passed is True and result.value == 7.9 and "subject-level" in result.detail
    record = {"unit": "record", "record_epsilon": 7.9, "subject_epsilon": 118.5}
    assert evaluate_gates(_ctx({"dp": record}))["max_epsilon"].value == 7.9
    over = {"unit": "subject", "subject_epsilon": 10.5, "record_epsilon": 1.0}
    assert evaluate_gates(_ctx({"dp": over}))["max_epsilon"].passed is False


@pytest.mark.parametrize("low, passed", [(0.40, True), (0.59, True), (0.65, False)])
def test_forget_set_gate_fails_only_on_significant_leakage(low: float, passed: bool) -> None:
    """A point AUC of 0.9 on a small forget set is noise; only the interval's lower end decides."""
    mia = {"forget_set_auc": 0.9, "forget_set_auc_low": low, "forget_set_size": 30, "forget_set_subjects": 25}
    result = evaluate_gates(_ctx({"mia": mia}))["max_forget_set_auc"]
    assert result.passed is passed and result.value == 0.9 and "(30 of 25 people)" in result.detail


def test_forget_set_gate_waits_for_enough_people() -> None:
    """One person's rows scoring high says how typical they are, not that the model remembers them."""
    mia = {"forget_set_auc": 0.9, "forget_set_auc_low": 0.8, "forget_set_size": 12, "forget_set_subjects": 1}
    assert "max_forget_set_auc" not in evaluate_gates(_ctx({"mia": mia}))
    enough = {**mia, "forget_set_subjects": GateParams().min_forget_set_subjects}
    assert evaluate_gates(_ctx({"mia": enough}))["max_forget_set_auc"].passed is False
