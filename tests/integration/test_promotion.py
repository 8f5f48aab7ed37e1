"""Promotion in the real registry: gates, approval, review."""
from __future__ import annotations

import json

import pytest

from helpers import cli, cli_json, csv_workspace, set_params

pytestmark = pytest.mark.integration


def test_gates_and_approval_decide_the_champion(tmp_path):
    ws = csv_workspace(tmp_path)
    set_params(ws, {"gates": {"require_approval": True}})
    first = cli_json(ws, "run")
    assert first["promoted"] is False and first["aliases"] == ["candidate"]
    assert "awaiting approval" in first["decision"]

    approved = json.loads(cli(ws, "approve", str(first["model_version"]), "--by", "dana", "--json").stdout)
    assert approved["aliases"] == ["candidate", "champion"] and approved["approved_by"] == "dana"

    set_params(ws, {"gates": {"require_approval": False, "min_accuracy": 0.99}})
    second = cli_json(ws, "run")
    assert second["promoted"] is False and second["aliases"] == ["candidate"]
    assert second["gates"]["min_accuracy"]["passed"] is False and "min_accuracy" in second["decision"]

    refused = cli(ws, "approve", str(second["model_version"]), "--by", "dana", check=False)
    assert refused.returncode == 2 and "failed gate(s) min_accuracy" in refused.stderr

    review = json.loads(cli(ws, "review", "--json").stdout)
    assert review["candidate"]["version"] == second["model_version"]
    assert review["champion"]["version"] == first["model_version"]
    assert review["candidate"]["failed_gates"] == ["min_accuracy"]
    assert "**FAIL**" in review["candidate"]["description"]
    text = cli(ws, "review").stdout
    assert "FAILED: min_accuracy" in text and "Membership inference" in text

    from oblivio.tracking import client
    from oblivio.workspace import WorkspaceDir

    cfg = WorkspaceDir(ws).mlflow
    mv = client(cfg).get_model_version(cfg.model_name, str(second["model_version"]))
    assert mv.tags["gate.min_accuracy"] == "FAILED" and "blocked" in mv.tags["oblivio.promotion"]
    assert "champion" not in mv.aliases
    artifacts = client(cfg).list_artifacts(mv.run_id)
    assert {"mia.json", "mia_roc.svg", "metrics.json"} <= {a.path for a in artifacts}
