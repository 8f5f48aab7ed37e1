"""The purge guarantee on the production stack: a tracking server on PostgreSQL with artifacts
in S3, a DVC remote in S3, a Prefect server on PostgreSQL, shards trained on a Dask cluster.

One planted person (tests/canary.py), one run, one erasure; then every object of every
bucket, both databases (`pg_dump`), the services' logs and the workspace are scanned.
"""
from __future__ import annotations

import json
import time

import pytest

from canary import MARKER, object_hits
from prodstack import objects, prod_cli, registry

pytestmark = pytest.mark.production


def test_doctor_checks_every_backend(stack, erased):
    proc = prod_cli(stack, erased["ws"], "doctor", "--json")
    checks = {c["backend"]: c["ok"] for c in json.loads(proc.stdout)["checks"]}
    assert checks == {"mlflow tracking server": True, "mlflow database (gc)": True, "mlflow artifact store": True,
                      "dvc remote": True, "prefect server": True, "dask cluster": True}


def test_the_scan_would_see_the_person_before_the_erasure(erased):
    """The scan is not blind: before the erasure the DVC remote in S3 held the marked rows."""
    assert any(k.startswith("s3://dvc/purge/") for k in erased["planted"]), erased["planted"]


def test_erasure_promoted_and_the_old_version_is_gone_from_the_server(stack, erased):
    before, result = erased["before"], erased["result"]
    assert result["status"] == "promoted" and result["model_version"] == before["model_version"] + 1
    assert result["purge"]["model_versions_deleted"] == [before["model_version"]]
    c = registry(stack)
    versions = [int(v.version) for v in c.search_model_versions(f"name='{erased['model_name']}'")]
    assert versions == [result["model_version"]]
    keys = objects(stack)
    assert not [k for k in keys if erased["old_model_id"] in k], "the logged model's files stay in S3"
    assert not [k for k in keys if erased["old_run_id"] in k]
    assert [k for k in keys if k.startswith("s3://mlflow/")], "the new version's artifacts are in S3"


def test_no_copy_of_the_erased_person_remains_on_any_backend(stack, erased):
    """Every object of every bucket, both databases as SQL, the services' logs, the workspace."""
    hits = [hit for key, data in objects(stack).items() for hit in object_hits(key, data)]
    for database in ("mlflow", "prefect"):
        hits += object_hits(f"pg_dump {database}", stack.pg_dump(database).encode())
    for log in stack.base.glob("*.log"):
        hits += object_hits(str(log), log.read_bytes())
    ws = erased["ws"]
    hits += [hit for p in ws.rglob("*") if p.is_file() for hit in object_hits(str(p), p.read_bytes())]
    assert hits == []
    assert MARKER not in json.dumps(erased["result"])


def test_the_prefect_server_keeps_only_the_erasure_flow_run(stack, erased):
    """The flow runs that trained on the erased data (parameters, states, task runs, logs) are gone."""
    import urllib.request

    def post(path: str, body: dict) -> list:
        req = urllib.request.Request(f"{stack.prefect_api}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    assert erased["result"]["purge"]["flow_runs_deleted"] >= 1
    runs = [r for r in post("/flow_runs/filter", {"limit": 200}) if r["parameters"].get("root") == str(erased["ws"])]
    assert [r["parameters"]["trigger"] for r in runs] == ["forget"]
    deadline = time.monotonic() + 30  # the server deletes a flow run's logs in a background job
    while {log["flow_run_id"] for log in post("/logs/filter", {"limit": 200})} - {runs[0]["id"], None}:
        assert time.monotonic() < deadline, "logs of deleted flow runs stay"
        time.sleep(0.5)
