"""The Python API against a real workspace: each method's `to_dict()` equals the CLI's `--json`.

API calls run in a fresh interpreter (as a user's script would), with the same environment
as the CLI commands of these tests (the session's shared Prefect server).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import SHARED_API, CallbackReceiver, cli, cli_json, csv_workspace, set_params

pytestmark = pytest.mark.integration
VOLATILE = {"seconds", "flow_seconds", "steps", "run_id", "created_at", "updated_at", "due", "approved_at"}


def api(ws, code: str, *, check: bool = True) -> subprocess.CompletedProcess:
    """Run `code` with `ws = Workspace.open(...)` bound; it prints JSON or raises."""
    script = "import json, sys\nfrom oblivio import Workspace\nws = Workspace.open(sys.argv[1])\n" + textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    if os.environ.get(SHARED_API):
        env["PREFECT_API_URL"] = os.environ[SHARED_API]
    proc = subprocess.run([sys.executable, "-c", script, str(ws)], capture_output=True, text=True, env=env,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def api_json(ws, call: str) -> dict:
    return json.loads(api(ws, f"print(json.dumps(ws.{call}.to_dict(), default=str))").stdout)


def stable(obj):
    """Drop what differs between two calls by design (timings, ids of runs, timestamps)."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = csv_workspace(tmp_path_factory.mktemp("api"))
    set_params(ws, {"requests": {"callback_hosts": ["127.0.0.1"]}})
    return ws, cli_json(ws, "run")


def test_read_only_results_equal_the_cli_json(trained):
    ws, _ = trained
    assert api_json(ws, "review()") == json.loads(cli(ws, "review", "--json").stdout)
    # the candidate: on this tiny table a gate may hold the first version back from champion
    assert api_json(ws, "review(alias='candidate')") == json.loads(cli(ws, "review", "--alias", "candidate",
                                                                           "--json").stdout)
    assert api_json(ws, "verify(alias='candidate')") == json.loads(cli(ws, "verify", "--alias", "candidate",
                                                                           "--json").stdout)
    assert api_json(ws, "requests()") == json.loads(cli(ws, "requests", "--json").stdout)


def test_run_and_process_results_have_the_cli_shape(trained):
    ws, first = trained
    again = api_json(ws, "run()")  # every slice reused: the same model retrained on nothing
    assert again.keys() == first.keys()
    assert again["slices_trained"] == 0 and again["model_version"] == first["model_version"] + 1
    assert [s["weights_sha256"] for s in again["shards"]] == [s["weights_sha256"] for s in first["shards"]]
    assert stable(api_json(ws, "process()")) == stable(cli_json(ws, "process"))  # nothing to do, both


def test_forget_records_then_waits_like_the_cli(trained):
    ws, _ = trained
    recorded = api_json(ws, "forget(subjects=['100003'], reason='api #1')")
    by_cli = json.loads(cli(ws, "forget", "--subject", "100004", "--json").stdout)
    assert recorded.keys() == by_cli.keys() and recorded["status"] == by_cli["status"] == "pending"
    again = api_json(ws, "forget(subjects=['100003'], reason='api #1')")
    assert again["request_ids"] == recorded["request_ids"] and again["created"] is False
    with CallbackReceiver() as receiver:
        typed = api(ws, f"""
            r = ws.forget(subjects=['100005'], wait=True, callback_url={receiver.url!r})
            print(json.dumps({{"fields": [r.status, r.shards_retrained, r.records_removed, sorted(r.certificate)],
                              "dict": r.to_dict()}}, default=str))""")
    out = json.loads(typed.stdout)
    (told, headers), = receiver.received  # the deletion flow's last task told the requester, signed
    from oblivio import callbacks
    from oblivio.workspace import WorkspaceDir

    assert callbacks.verify(told, headers[callbacks.SIGNATURE_HEADER], WorkspaceDir(ws).intake_token)
    summary = json.loads(told)
    assert summary["status"] == "promoted" and summary["certificate"]["records_removed"] >= 1
    assert "100005" not in told.decode()
    status, shards, removed, certified = out["fields"]
    assert status == out["dict"]["status"] == "promoted" and shards == out["dict"]["shards_retrained"]
    assert removed == out["dict"]["records_removed"] >= 1
    assert set(recorded["request_ids"] + by_cli["request_ids"]) <= set(certified)  # one batch took all three
    rows = {r["id"]: r for r in api_json(ws, "requests(status='promoted')")["requests"]}
    assert set(certified) <= rows.keys()


def test_recording_a_request_imports_neither_torch_mlflow_nor_prefect(trained):
    ws, _ = trained
    out = api(ws, """
        ws.forget(subjects=['100009'])
        print(json.dumps(sorted(m for m in ('torch', 'mlflow', 'prefect', 'opacus', 'great_expectations')
                                if m in sys.modules)))""")
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("call, message", [
    ("verify(replay=-1)", "replay must be a whole number of slices >= 0"),
    ("forget(subjects='100001')", "not a single string"),
    ("forget()", "names no subject and no record"),
    ("forget(subjects=['no-such-person'])", "match no record"),
    ("review(0)", "whole number >= 1"),
    ("approve(999, by='dana')", "has no version 999"),
    ("process(executor='dask', dask_address='tcp://127.0.0.1:9')", "No Dask scheduler answers"),
    ("scenario('backdoor', fraction=1.5)", "fraction must be a share"),
])
def test_user_mistakes_raise_one_oblivio_error(trained, call, message):
    ws, _ = trained
    proc = api(ws, f"""
        from oblivio import OblivioError
        try:
            ws.{call}
        except OblivioError as err:
            print(json.dumps({{"type": type(err).__name__, "message": str(err)}}))""")
    got = json.loads(proc.stdout)
    assert message in got["message"], got


def test_open_outside_a_workspace_is_one_message(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from oblivio import Workspace; Workspace.open('.')"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "WorkspaceError" in proc.stderr and "oblivio init" in proc.stderr
