"""The scheduled pipeline deployed on a process work pool and run by a `prefect worker`
(the loopback stack's), not in-process by `oblivio serve`."""
from __future__ import annotations

import json
import time
import urllib.request

import pytest

from oblivio.loopback import WORK_POOL
from prodstack import prod_cli, registry

pytestmark = pytest.mark.production


def api(stack, method: str, path: str, body: dict | None = None):
    req = urllib.request.Request(f"{stack.prefect_api}{path}", method=method,
                                 data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def test_a_prefect_worker_runs_the_deployed_pipeline(stack, erased):
    ws, model_name = erased["ws"], erased["model_name"]
    deployed = json.loads(prod_cli(stack, ws, "deploy", "--work-pool", WORK_POOL, "--json").stdout)
    deployment = api(stack, "GET", f"/deployments/{deployed['deployment_id']}")
    assert deployment["work_pool_name"] == WORK_POOL and deployment["parameters"]["root"] == str(ws)
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]
    versions_before = {int(v.version) for v in registry(stack).search_model_versions(f"name='{model_name}'")}

    run = api(stack, "POST", f"/deployments/{deployed['deployment_id']}/create_flow_run", {})
    deadline = time.monotonic() + 400
    while (state := api(stack, "GET", f"/flow_runs/{run['id']}")["state"]["type"]) not in (
            "COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"the worker did not finish the run ({state})"
        time.sleep(1)
    assert state == "COMPLETED", (stack.base / "worker.log").read_text()[-3000:]
    flow_run = api(stack, "GET", f"/flow_runs/{run['id']}")
    assert flow_run["work_pool_name"] == WORK_POOL
    new = {int(v.version) for v in registry(stack).search_model_versions(f"name='{model_name}'")} - versions_before
    assert len(new) == 1, "the worker's run registered one version on the tracking server"
    (version,) = new
    assert registry(stack).get_run(registry(stack).get_model_version(model_name, version).run_id) \
        .data.tags["oblivio.trigger"] == "schedule"
