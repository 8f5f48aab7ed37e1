"""The corrective route: exact erasure plus a standing SSD correction, and the scenario command."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from helpers import cli, cli_json, csv_workspace

pytestmark = pytest.mark.integration


def manifest(ws) -> dict:
    return json.loads((ws / "models" / "manifest.json").read_text())


def test_correction_stands_through_a_later_erasure(tmp_path):
    ws = csv_workspace(tmp_path)
    cli_json(ws, "run")
    shard0 = pq.read_table(ws / "data" / "shards" / "shard=0" / "part.parquet").to_pandas()
    flagged = tmp_path / "flagged.txt"
    flagged.write_text("\n".join(shard0["rid"].astype(str).iloc[:8]))
    result = json.loads(cli(ws, "forget", "--records-from-file", str(flagged), "--kind", "corrective",
                            "--reason", "vendor batch 7", "--wait", "--json").stdout)
    assert result["route"] == "corrective" and result["records_removed"] == 8
    (request_id,) = result["request_ids"]
    first = {s["index"]: s["corrections"] for s in manifest(ws)["shards"]}
    assert all([c["request_id"] for c in cs] == [request_id] for cs in first.values())
    assert (ws / ".oblivio" / "corrections" / f"{request_id}.parquet").exists(), "the evidence is kept"
    cert = json.loads((ws / "certificates" / f"{request_id}.json").read_text())
    assert "corrective" in cert["route"] and set(cert["corrections"]) == {"0", "1", "2"}

    other = pq.read_table(ws / "data" / "shards" / "shard=2" / "part.parquet").to_pandas()["person"].iloc[0]
    erasure = json.loads(cli(ws, "forget", "--subject", str(other), "--wait", "--json").stdout)
    assert erasure["route"] == "erasure" and erasure["shards_retrained"] == [2]
    after = {s["index"]: s for s in manifest(ws)["shards"]}
    for k, corrections in first.items():
        again = after[k]["corrections"]
        assert [(c["request_id"], c["alpha"], c["lam"]) for c in again] == \
               [(c["request_id"], c["alpha"], c["lam"]) for c in corrections], "the recorded choice is re-applied"
    applied = [k for k, s in after.items() if any(c["applied"] and c["selected"] for c in s["corrections"])]
    for k in applied:
        assert after[k]["weights_sha256"] != after[k]["trained_weights_sha256"], "published weights are dampened"


def test_corrective_request_without_training_records_is_rejected(tmp_path):
    ws = csv_workspace(tmp_path)
    cli_json(ws, "run")
    holdout = pq.read_table(ws / "data" / "holdout.parquet").to_pandas()
    proc = cli(ws, "forget", "--record", str(holdout["rid"].iloc[0]), "--kind", "corrective", "--wait",
               check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "none of the flagged records is in the training data" in proc.stderr
    (request,) = json.loads(cli(ws, "requests", "--json").stdout)["requests"]
    assert request["status"] == "rejected" and "held-out rows only" in request["error"]


def test_scenario_reports_before_exact_only_and_corrective(tmp_path):
    ws = csv_workspace(tmp_path)
    result = json.loads(cli(ws, "scenario", "backdoor", "--fraction", "0.1", "--flagged", "0.25", "--json").stdout)
    assert result["manipulated"] > 0 and result["flagged"] == round(0.25 * result["manipulated"])
    for name in ("before", "exact_only", "corrective"):
        assert 0 <= result[name]["attack_success_rate"] <= 1 and 0 < result[name]["clean_accuracy"] <= 1
    assert not list(tmp_path.glob("oblivio-scenario-*")), "the scratch copy is removed"
    assert not (ws / "data").exists(), "the scenario never touches the workspace itself"
