"""Operating it: serve with an event-triggered deletion flow, Dask scale-out, concurrent submissions,
and no raw subject id outside the data files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from oblivio.flows.prefect_api import free_port
from helpers import OBLIVIO, cli, cli_json, csv_workspace, synthetic_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    table = synthetic_table()
    table["person"] = "subj-" + table["person"].astype(str)  # ids that cannot occur by chance in a file
    ws = csv_workspace(tmp_path_factory.mktemp("ops"), table=table)
    return ws, cli_json(ws, "run")


def test_dask_cluster_trains_the_same_bits_as_threads(trained):
    """Scale-out changes where shards train, not what they learn."""
    ws, first = trained
    dask = cli_json(ws, "run", "--from-scratch", "--executor", "dask", "--workers", "2")
    assert dask["slices_trained"] == 3 * 2
    assert [s["weights_sha256"] for s in dask["shards"]] == [s["weights_sha256"] for s in first["shards"]]


def test_serve_runs_deletions_on_events_and_leaves_deployments_active(trained):
    ws, _ = trained
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    server = subprocess.Popen([OBLIVIO, "serve", "--port", str(port)], cwd=ws, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while not (ws / ".oblivio" / "serve.json").exists():
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()[-3000:]
            time.sleep(1)
        time.sleep(3)  # deployments and automation registered right after the state file
        subject = str(pq.read_table(ws / "data" / "shards" / "shard=1" / "part.parquet").to_pandas()["person"].iloc[0])
        submitted = json.loads(cli(ws, "forget", "--subject", subject, "--json", embedded=True).stdout)
        assert submitted["announced"] is True
        (request_id,) = submitted["request_ids"]
        while True:
            rows = json.loads(cli(ws, "requests", "--json").stdout)["requests"]
            status = {r["id"]: r["status"] for r in rows}[request_id]
            if status == "promoted":
                break
            assert status in ("pending", "applied") and time.monotonic() < deadline + 240, status
            time.sleep(3)
        # `forget --wait` hands the request to the warm serving process and reports its outcome
        other = str(pq.read_table(ws / "data" / "shards" / "shard=0" / "part.parquet").to_pandas()["person"].iloc[0])
        waited = json.loads(cli(ws, "forget", "--subject", other, "--wait", "--json", embedded=True).stdout)
        assert waited["processed_by"] == "serve" and waited["status"] == "promoted" and waited["promoted"] is True
        assert waited["shards_retrained"] == [0] and waited["records_removed"] >= 1
        (certificate,) = waited["certificate"].values()
        assert json.loads(open(certificate).read())["model_version"] == waited["model_version"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert not (ws / ".oblivio" / "serve.json").exists(), "serve cleans up its state on SIGTERM"

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # restart a server on the same home to read what serve left behind
    restarted = subprocess.Popen([OBLIVIO, "serve", "--port", str(port)], cwd=ws, env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (ws / ".oblivio" / "serve.json").exists():
            time.sleep(1)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            with get_client(sync_client=True) as client:
                deployments = client.read_deployments()
        names = {f"{d.name}": d for d in deployments}
        assert {"scheduled", "process-requests"} <= names.keys()
        assert not any(d.paused for d in deployments), "stopping serve must not pause the deployments"
        scheduled = names["scheduled"]
        assert scheduled.schedules and scheduled.schedules[0].schedule.cron == "0 2 * * *"
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(timeout=60)


def test_serve_refuses_a_public_bind_without_consent(trained):
    ws, _ = trained
    proc = cli(ws, "serve", "--host", "0.0.0.0", check=False)
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr


def test_concurrent_submissions_are_recorded_exactly_once(trained):
    """8 writers at once (and a duplicate from each): every request lands once."""
    ws, _ = trained
    people = pq.read_table(ws / "data" / "shards" / "shard=0" / "part.parquet").to_pandas()["person"].astype(str)
    subjects = list(dict.fromkeys(people))[:16]

    def submit(i: int) -> list[str]:
        own = cli(ws, "forget", "--subject", subjects[i], "--json")
        dup = cli(ws, "forget", "--subject", subjects[0], "--json")
        return [json.loads(own.stdout)["request_ids"][0], json.loads(dup.stdout)["request_ids"][0]]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(8)))
    rows = json.loads(cli(ws, "requests", "--status", "pending", "--json").stdout)["requests"]
    assert len(rows) == 8 and {r["id"] for r in rows} == {own for own, _ in ids}
    assert len({dup for _, dup in ids}) == 1


def test_no_raw_subject_id_outside_the_data(trained):
    """Ledger, MLflow store and artifacts, Prefect home, certificates, reports: keyed hashes only."""
    ws, _ = trained
    frames = [pq.read_table(p).to_pandas() for p in (ws / "data").rglob("*.parquet")]
    needles = {p.encode() for f in frames for p in f["person"].astype(str)}
    places = [ws / ".oblivio" / "ledger.db", ws / "mlflow.db", ws / "mlartifacts", ws / ".oblivio" / "prefect",
              ws / "certificates", ws / "reports", ws / "models", ws / "checkpoints"]
    leaks = []
    for place in places:
        files = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
        for path in files:
            data = path.read_bytes()
            if b"subj-" in data:
                leaks += [f"{path}: {n.decode()}" for n in needles if n in data]
    assert leaks == []
    assert (ws / ".oblivio" / "secret").stat().st_mode & 0o777 == 0o600
