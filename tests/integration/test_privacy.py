"""Privacy end to end: subject-level DP-SGD through the real CLI, erasure exactness with DP on,
and the one-run DP audit (`oblivio audit-dp`)."""
from __future__ import annotations

import json

import pytest

from helpers import cli, cli_json, csv_workspace, set_params, synthetic_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dp_workspace(tmp_path_factory):
    ws = csv_workspace(tmp_path_factory.mktemp("privacy"), synthetic_table(n_subjects=300))
    set_params(ws, {"dp": {"enabled": True, "target_epsilon": 4.0}})
    return ws, cli_json(ws, "run")


def test_subject_level_dp_reports_and_gates_the_person_figure(dp_workspace):
    ws, run = dp_workspace
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    dp = metrics["dp"]
    assert dp["unit"] == "subject" and dp["delta"] == 1e-5 == dp["subject_delta"]
    assert 3.0 < dp["subject_epsilon"] <= 4.0  # calibrated per person, then accounted from the steps taken
    assert dp["record_epsilon"] == 2 * dp["subject_epsilon"]
    review = json.loads(cli(ws, "review", "--json").stdout)["candidate"]
    gate = review["gates"]["max_epsilon"]
    assert gate["value"] == dp["subject_epsilon"] and "subject-level" in gate["detail"]
    assert "per person" in review["description"]
    calibration = json.loads((ws / ".oblivio" / "dp-calibration.json").read_text())
    assert calibration["unit"] == "subject"


def test_erasure_with_subject_dp_equals_training_from_scratch(dp_workspace):
    ws, run = dp_workspace
    forgotten = json.loads(cli(ws, "forget", "--subject", "100007", "--wait", "--json").stdout)
    assert forgotten["status"] in ("applied", "promoted"), forgotten  # promotion is the gates' call
    assert len(forgotten["shards_retrained"]) == 1 and forgotten["records_removed"] > 0
    erased = [s["weights_sha256"] for s in json.loads((ws / "models" / "manifest.json").read_text())["shards"]]
    scratch = cli_json(ws, "run", "--from-scratch", "--no-baseline")
    assert [s["weights_sha256"] for s in scratch["shards"]] == erased


def test_audit_dp_bounds_epsilon_and_has_power_without_dp(tmp_path):
    """One run each, same canaries: without DP the bound is clearly positive; with DP at ε = 1 it
    stays at or below ε (else the command fails), far below the non-private bound; both go to the
    registry beside ε."""
    ws = csv_workspace(tmp_path, synthetic_table(n_subjects=200))
    set_params(ws, {"dp": {"enabled": True, "target_epsilon": 1.0, "batch_size": 0, "lr": 0},  # DP at train.*
                    "train": {"hidden": [64], "epochs_per_slice": 30, "batch_size": 16}})
    cli(ws, "run")
    result = cli_json(ws, "audit-dp", "--canaries", "200")
    assert result["dp_enabled"] and result["unit"] == "subject" and result["canaries"] == 200
    assert result["ok"] and result["epsilon_lower"] <= result["epsilon"] <= 1.0
    assert result["non_private_epsilon_lower"] > 0.25, result["runs"]["non_private"]
    assert result["non_private_epsilon_lower"] > result["epsilon_lower"] + 0.2, result["runs"]
    review = json.loads(cli(ws, "review", "--json").stdout)["candidate"]
    assert review["version"] == result["model_version"]
    assert "Empirical DP audit" in review["description"] and "epsilon lower bound" in review["description"]
    assert not list(tmp_path.glob("oblivio-audit-dp-*"))  # scratch copies are gone


def test_audit_dp_refuses_too_few_canaries(dp_workspace):
    ws, _ = dp_workspace
    proc = cli(ws, "audit-dp", "--canaries", "3", check=False)
    assert proc.returncode == 2 and "--canaries must be at least 10" in proc.stderr and "Traceback" not in proc.stderr
