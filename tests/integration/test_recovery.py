"""Crash recovery with real processes: SIGKILL at named points, then run again.

`OBLIVIO_CRASH_AT` makes the command SIGKILL its own process group at that point (workers
and the temporary Prefect server die too): no exception handler or cleanup runs.
"""
from __future__ import annotations

import json
import signal

import pyarrow.parquet as pq
import pytest

from helpers import cli, cli_json, csv_workspace

pytestmark = pytest.mark.integration


def crash(ws, *args, at: str):
    proc = cli(ws, *args, check=False, env={"OBLIVIO_CRASH_AT": at}, embedded=True)
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL at {at}, got {proc.returncode}: {proc.stderr[-2000:]}"


def registry_versions(ws) -> dict[int, set]:
    from oblivio.tracking import client
    from oblivio.workspace import WorkspaceDir

    cfg = WorkspaceDir(ws).mlflow
    c = client(cfg)  # search results carry no aliases: read each version
    return {int(v.version): set(c.get_model_version(cfg.model_name, v.version).aliases)
            for v in c.search_model_versions(f"name='{cfg.model_name}'")}


def test_killed_training_resumes_to_the_same_bits(tmp_path):
    ws = csv_workspace(tmp_path)
    crash(ws, "run", at="train:checkpoint-saved")
    assert list((ws / "checkpoints").rglob("*.pt")), "the crash came after a checkpoint was written"
    assert not (ws / "models").exists() and not registry_versions(ws) if (ws / "mlflow.db").exists() else True
    resumed = cli_json(ws, "run", embedded=True)  # finds (and stops) the killed run's orphaned server
    assert resumed["slices_reused"] >= 1 and resumed["promoted"] is True
    scratch = cli_json(ws, "run", "--from-scratch")
    assert [s["weights_sha256"] for s in scratch["shards"]] == [s["weights_sha256"] for s in resumed["shards"]]


def test_killed_deletions_complete_once(tmp_path):
    """Two requests, one after the other, each killed at another point of the deletion flow
    (one workspace and one training run for both: the second starts from the first's champion)."""
    ws = csv_workspace(tmp_path)
    champion = cli_json(ws, "run")["model_version"]
    people = pq.read_table(ws / "data" / "shards" / "shard=1" / "part.parquet").to_pandas()["person"].unique()
    for point, subject in zip(["erasure:applied", "erasure:purging"], map(str, people)):
        request = json.loads(cli(ws, "forget", "--subject", subject, "--json").stdout)["request_ids"][0]
        crash(ws, "process", at=point)
        champion_during = [v for v, aliases in registry_versions(ws).items() if "champion" in aliases]
        assert champion_during in ([champion], [champion + 1]), point

        result = cli_json(ws, "process")
        assert result["request_ids"] == [request] and result["promoted"] is True, point
        cert = json.loads((ws / "certificates" / f"{request}.json").read_text())
        assert cert["records_removed"] >= 1, f"{point}: the retry still knows what the request removed"
        requests = json.loads(cli(ws, "requests", "--json").stdout)["requests"]
        assert {r["id"]: r["status"] for r in requests}[request] == "promoted", point
        assert {r["status"] for r in requests} == {"promoted"}, point
        again = cli_json(ws, "process")
        assert again["request_ids"] == [], f"{point}: a promoted request is never applied twice"
        versions = registry_versions(ws)
        assert champion not in versions, f"{point}: the version trained on the erased data was purged"
        (champion,) = [v for v, aliases in versions.items() if "champion" in aliases]
    report = json.loads(cli(ws, "verify", "--json").stdout)
    assert report["ok"] is True
