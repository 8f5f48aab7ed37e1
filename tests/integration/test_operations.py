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
from helpers import OBLIVIO, cli, cli_json, csv_workspace, set_params, synthetic_table

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
    (ws / ".oblivio" / "intake-token").unlink()  # a workspace made before the intake: serve creates its token
    set_params(ws, {"executor": {"kind": "process", "max_workers": 2}})  # serve keeps a warm pool for runs
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    log = ws.parent / "serve.log"  # a file, not a pipe: a grandchild may hold a pipe open past serve's exit
    server = subprocess.Popen([OBLIVIO, "serve", "--port", str(port)], cwd=ws, env=env, start_new_session=True,
                              stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while not (ws / ".oblivio" / "serve.json").exists():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
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
        # the HTTP intake: recorded, then the deletion deployment triggered exactly as `forget` does
        intake_url = json.loads((ws / ".oblivio" / "serve.json").read_text())["intake_url"]
        assert intake_url.startswith("http://127.0.0.1:")
        token = (ws / ".oblivio" / "intake-token").read_text().strip()
        assert (ws / ".oblivio" / "intake-token").stat().st_mode & 0o777 == 0o600
        third = str(pq.read_table(ws / "data" / "shards" / "shard=2" / "part.parquet").to_pandas()["person"].iloc[0])
        refused = _post(f"{intake_url}/v1/requests", {"subjects": [third]}, token="not-the-token")
        assert refused[0] == 401
        code, body = _post(f"{intake_url}/v1/requests", {"subjects": [third], "reason": "portal #9"}, token=token,
                           key="portal-9")
        assert code == 202 and body["announced"] is True and third not in json.dumps(body)
        while (status := _get(f"{intake_url}/v1/requests/{body['request_id']}", token)["status"]) != "promoted":
            assert status in ("pending", "applied") and time.monotonic() < deadline + 420, status
            time.sleep(1)
        assert _post(f"{intake_url}/v1/requests", {"subjects": [third], "reason": "portal #9"}, token=token,
                     key="portal-9") == (200, {**body, "created": False, "announced": False, "status": "promoted"})
        # `run` hands over too: serve's warm process retrains from scratch on its pool of shard workers,
        # to the bits the erasures left
        published = json.loads((ws / "models" / "manifest.json").read_text())["shards"]
        served_run = json.loads(cli(ws, "run", "--from-scratch", "--json", embedded=True).stdout)
        assert served_run["processed_by"] == "serve" and served_run["slices_trained"] == 3 * 2
        assert [s["weights_sha256"] for s in served_run["shards"]] == [s["trained_weights_sha256"] for s in published]
        assert served_run["model_version"] == waited["model_version"] + 2 and served_run["promoted"] is True
        # it returned once promoted: the MIA intervals no gate reads are drawn after, and logged to its run
        assert "intervals" not in served_run
        outcome = ws / ".oblivio" / "runs" / f"{served_run['flow_run_id']}.json"
        while "intervals" not in (final := json.loads(outcome.read_text())["summary"]):
            assert time.monotonic() < deadline + 600, "the served run's flow did not end"
            time.sleep(0.5)
        assert final["intervals"] == {"attached": True} and final["model_version"] == served_run["model_version"]
        from oblivio import tracking
        from oblivio.workspace import WorkspaceDir

        cfg = WorkspaceDir(ws).mlflow
        c = tracking.client(cfg)
        logged = json.loads(open(c.download_artifacts(final["run_id"], "mia.json")).read())
        assert "intervals_pending" not in logged and all(s.get("intervals") for s in logged["shards"])
        assert json.loads(cli(ws, "verify", "--json").stdout)["ok"] is True
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    output = log.read_text()
    assert not (ws / ".oblivio" / "serve.json").exists(), "serve cleans up its state on SIGTERM"
    assert token not in output and third not in output and subject not in output, "no token or raw id in its log"

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


def _post(url: str, body: dict, *, token: str, key: str | None = None) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               **({"Idempotency-Key": key} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _get(url: str, token: str) -> dict:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


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
