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
