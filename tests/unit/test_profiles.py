"""`init --profile production`: what it writes, what it refuses, and the doctor's cheap checks."""
from __future__ import annotations

import pytest

from oblivio.flows.prefect_api import free_port
from oblivio.errors import BackendError, ConfigError
from oblivio.profiles import Production, load_backends
from oblivio.workspace import WorkspaceDir, init_workspace


def dvc_says(root, *args: str) -> str:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    return subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def test_an_embedded_workspace_has_its_local_remote_as_dvc_reads_it(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    assert dvc_says(ws.root, "remote", "list").split()[0] == "local" and dvc_says(ws.root, "remote", "default") == "local"
    assert dvc_says(ws.root, "config", "remote.local.url") == str(ws.root / ".oblivio" / "dvc-remote")
    assert dvc_says(ws.root, "config", "core.analytics") == "false"


def production(**changes) -> Production:
    dead = free_port()  # nothing listens: the cheap checks must fail
    values = {"mlflow_uri": f"http://127.0.0.1:{dead}", "mlflow_database": "postgresql+psycopg2://ml@db.internal/ml",
              "dvc_remote": "s3://bucket/oblivio", "s3_endpoint": f"http://127.0.0.1:{dead}",
              "prefect_api": f"http://127.0.0.1:{dead}/api", "dask_address": f"tcp://127.0.0.1:{dead}", **changes}
    return Production(**values)


def test_production_profile_points_every_file_at_the_servers(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    prod = production()
    ws = init_workspace(tmp_path / "team", profile="production", production=prod)
    cfg = WorkspaceDir(ws.root).mlflow
    assert cfg.remote and cfg.tracking_uri == prod.mlflow_uri and cfg.artifact_location == ""
    assert cfg.gc_backend_store_uri == prod.mlflow_database
    assert cfg.experiment == cfg.model_name == "oblivio-team"
    dvc = (ws.root / ".dvc" / "config").read_text()
    assert "remote = store" in dvc and "url = s3://bucket/oblivio" in dvc and prod.s3_endpoint in dvc
    assert "dvc-remote" not in dvc, "the embedded profile's local remote is gone"
    # DVC itself reads what init wrote in-process
    assert dvc_says(ws.root, "remote", "default") == "store"
    assert dvc_says(ws.root, "config", "remote.store.endpointurl") == prod.s3_endpoint
    assert dvc_says(ws.root, "config", "core.autostage") == "true"
    assert load_backends(ws.root).prefect_api == prod.prefect_api
    assert WorkspaceDir(ws.root).environment()["PREFECT_API_URL"] == prod.prefect_api
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
    assert "PREFECT_API_URL" not in WorkspaceDir(ws.root).environment(), "the environment overrides the file"
    ex = WorkspaceDir(ws.root).params.executor
    assert ex.kind == "dask" and ex.dask_address == prod.dask_address


@pytest.mark.parametrize("changes, message", [
    ({"mlflow_uri": ""}, "--mlflow-uri is required"),
    ({"dvc_remote": "/local/path"}, "--dvc-remote must start with s3://"),
    ({"mlflow_database": "postgresql+psycopg2://ml:hunter2@db/ml"}, "--mlflow-database holds a password"),
    ({"dask_address": "127.0.0.1:8786"}, "--dask-address must start with tcp://"),
])
def test_a_bad_profile_is_refused_and_nothing_is_created(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        init_workspace(tmp_path / "team", profile="production", production=production(**changes))
    assert not (tmp_path / "team").exists()
    assert "hunter2" not in str(err.value)


def test_unknown_keys_in_backends_yaml_are_refused(tmp_path):
    (tmp_path / "backends.yaml").write_text("profile: production\npassword: x\n")
    with pytest.raises(ConfigError, match="must hold only"):
        load_backends(tmp_path)


def test_a_command_names_every_backend_that_does_not_answer(tmp_path):
    from oblivio.doctor import require_reachable, run_checks

    ws = WorkspaceDir(init_workspace(tmp_path / "team", profile="production", production=production()).root)
    down = {c["backend"] for c in run_checks(ws, cheap=True) if not c["ok"]}
    assert down == {"mlflow tracking server", "dvc remote", "prefect server", "dask cluster"}
    with pytest.raises(BackendError, match="the mlflow tracking server does not answer") as err:
        require_reachable(ws, "run")
    assert "Nothing was written" in str(err.value) and err.value.exit_code == 5


def test_the_embedded_profile_checks_nothing_remote(tmp_path):
    from oblivio.doctor import run_checks

    ws = WorkspaceDir(init_workspace(tmp_path / "solo").root)
    assert run_checks(ws, cheap=True) == []
    assert all(c["ok"] and c["detail"].startswith("embedded") for c in run_checks(ws))
