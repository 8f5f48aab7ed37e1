"""Faults on the production stack: a backend breaks in the middle of a deletion batch.

The command is held at a named point (oblivio.faults, `OBLIVIO_HOLD_AT`) while the test
breaks a real backend: the tracking server is SIGKILLed, or the S3 endpoint stops
answering. Then the backend comes back and the next `oblivio process` completes the
batch: one model version, each request applied once. A backend down when `run` starts
is refused with one message naming it, before anything is written.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from helpers import OBLIVIO
from prodstack import objects, prod_cli, production_workspace, registry

pytestmark = pytest.mark.production


def held(stack, ws, point: str, hold, *args):
    """`oblivio ARGS` started to stop at `point` until `hold` is deleted."""
    env = {**os.environ, **stack.client_environment(), "OBLIVIO_HOLD_AT": point, "OBLIVIO_HOLD_FILE": str(hold),
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "PYTHONUNBUFFERED": "1"}
    for leaked in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(leaked, None)
    proc = subprocess.Popen([OBLIVIO, *args], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    while not hold.exists():
        assert proc.poll() is None, f"exited {proc.returncode} before {point}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"never reached {point}"
        time.sleep(0.2)
    return proc


def requests_of(stack, ws) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads(prod_cli(stack, ws, "requests", "--json").stdout)["requests"]}


def submit(stack, ws, shard: int) -> str:
    person = pq.read_table(ws / "data" / "shards" / f"shard={shard}" / "part.parquet").to_pandas()["person"].iloc[0]
    return json.loads(prod_cli(stack, ws, "forget", "--subject", str(person), "--json").stdout)["request_ids"][0]


def versions(stack, model_name: str) -> list[int]:
    return sorted(int(v.version) for v in registry(stack).search_model_versions(f"name='{model_name}'"))


def test_tracking_server_killed_then_s3_cut_then_the_batch_completes_once(stack, erased, s3_link, tmp_path):
    """One request through two faults (each costs a retrained batch, so they share one):
    the tracking server SIGKILLed after the batch registered its version, then S3
    unreachable during the purge; then the next `process` completes it."""
    ws, model_name = erased["ws"], erased["model_name"]
    request = submit(stack, ws, shard=0)

    proc = held(stack, ws, "registry:registered", tmp_path / "hold-1", "process")
    registered = versions(stack, model_name)[-1]  # registered, not yet promoted
    stack.kill("mlflow")
    (tmp_path / "hold-1").unlink()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 5 and "Traceback" not in stderr and "retries them" in stderr, stderr[-2000:]
    assert requests_of(stack, ws)[request]["status"] == "failed"
    stack.restart_mlflow()

    proc = held(stack, ws, "erasure:purging", tmp_path / "hold-2", "process")
    s3_link.cut()
    try:
        (tmp_path / "hold-2").unlink()
        _, stderr = proc.communicate(timeout=300)
    finally:
        s3_link.mend()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr[-2000:]
    assert "could not clean the DVC remote; erased data may remain there" in stderr
    state = requests_of(stack, ws)[request]
    assert state["status"] == "applied" and "dvc gc" in state["error"], state

    result = json.loads(prod_cli(stack, ws, "process", "--json").stdout)
    assert result["request_ids"] == [request] and result["promoted"] is True
    assert result["model_version"] == registered, "each retry reused the version the first attempt registered"
    assert versions(stack, model_name) == [registered], "no duplicate model version, the older one purged"
    state = requests_of(stack, ws)[request]
    assert state["status"] == "promoted" and not state["error"]
    remote = {k.removeprefix("s3://dvc/purge/") for k in objects(stack) if k.startswith("s3://dvc/purge/")}
    cache = ws / ".dvc" / "cache"
    assert remote == {str(p.relative_to(cache)) for p in (cache / "files").rglob("*") if p.is_file()}, \
        "the finished purge left the remote holding exactly what the workspace references"


def test_a_backend_down_at_run_start_is_named_and_nothing_is_written(stack, tmp_path):
    from oblivio.flows.prefect_api import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    ws = production_workspace(stack, tmp_path, name="down", **{"--mlflow-uri": dead})
    before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    proc = prod_cli(stack, ws, "run", check=False)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert "mlflow tracking server does not answer" in proc.stderr and "Nothing was written" in proc.stderr
    assert sorted(p.relative_to(ws) for p in ws.rglob("*")) == before
    doctor = prod_cli(stack, ws, "doctor", check=False)
    assert doctor.returncode == 5
    assert [line.split(":")[0] for line in doctor.stdout.splitlines() if line.startswith("FAIL")] == \
        ["FAIL mlflow tracking server", "FAIL mlflow artifact store"]
