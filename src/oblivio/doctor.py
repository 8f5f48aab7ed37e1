"""`oblivio doctor`: is every configured backend reachable, with the rights the purge needs?

One check per backend, each a real round trip: the tracking server answers and lists
experiments; its database lets `mlflow gc` hard-delete; its artifact proxy lets a file be
written and deleted; the DVC remote lets an object be written, listed, read and deleted;
the Prefect API answers and lists flow runs; the Dask scheduler has workers. The embedded
profile's local stores are reported too, so a user sees the whole picture.
`reachable` is the cheap subset a command checks before it writes anything.
"""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from oblivio.errors import BackendError
from oblivio.workspace import WorkspaceDir

PROBE_PREFIX = "oblivio-doctor"


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 5) -> bytes:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return response.read()


def _why(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return f"{type(err).__name__}: {err}"


def _tcp(address: str, timeout: float = 3) -> None:
    parts = urlsplit(address)
    with socket.create_connection((parts.hostname, parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)),
                                  timeout=timeout):
        pass


def dvc_remote(root: Path) -> dict:
    """The default DVC remote's settings (`url`, `endpointurl`, ...) from .dvc/config."""
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"), validate=False)
    name = config["core"].get("remote")
    return {"name": name, **config["remote"].get(name, {})} if name else {}


# --- the checks ------------------------------------------------------------------

def _mlflow_server(ws: WorkspaceDir) -> str:
    cfg = ws.mlflow
    _http("GET", f"{cfg.tracking_uri}/health")
    _http("POST", f"{cfg.tracking_uri}/api/2.0/mlflow/experiments/search", json.dumps({"max_results": 1}).encode())
    return f"{cfg.tracking_uri} answers and lists experiments"


def _mlflow_database(ws: WorkspaceDir) -> str:
    from sqlalchemy import create_engine, text

    cfg = ws.mlflow
    if not cfg.gc_backend_store_uri:
        raise RuntimeError("mlflow.yaml has no gc_backend_store_uri: the purge cannot run `mlflow gc`")
    engine = create_engine(cfg.gc_backend_store_uri)
    try:
        with engine.connect() as conn:
            missing = [t for t in ("runs", "logged_models", "model_versions")
                       if not conn.execute(text("SELECT has_table_privilege(current_user, :t, 'DELETE')"),
                                           {"t": t}).scalar()]
    finally:
        engine.dispose()
    if missing:
        raise PermissionError(f"no DELETE on {', '.join(missing)}: `mlflow gc` could not erase runs")
    return f"{engine.url.render_as_string(hide_password=True)}: DELETE on runs, logged models, versions (mlflow gc)"


def _mlflow_artifacts(ws: WorkspaceDir) -> str:
    base = f"{ws.mlflow.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/{PROBE_PREFIX}/{uuid.uuid4().hex}"
    _http("PUT", base, b"probe")
    _http("DELETE", base)
    return "the artifact proxy writes and deletes (what mlflow gc asks of it)"


def _dvc_s3(ws: WorkspaceDir, remote: dict) -> str:
    import boto3

    parts = urlsplit(remote["url"])
    endpoint = remote.get("endpointurl") or None
    s3 = boto3.client("s3", endpoint_url=endpoint)
    key = f"{parts.path.strip('/')}/{PROBE_PREFIX}-{uuid.uuid4().hex}".lstrip("/")
    s3.put_object(Bucket=parts.netloc, Key=key, Body=b"probe")
    s3.list_objects_v2(Bucket=parts.netloc, Prefix=key)
    s3.get_object(Bucket=parts.netloc, Key=key)["Body"].read()
    s3.delete_object(Bucket=parts.netloc, Key=key)
    return f"{remote['url']}: put, list, get and delete (what dvc push and dvc gc -c need)"


def _prefect(ws: WorkspaceDir) -> str:
    api = ws.backends.prefect_api
    _http("GET", f"{api}/health")
    _http("POST", f"{api}/flow_runs/filter", json.dumps({"limit": 1}).encode())
    return f"{api} answers and lists flow runs"


def _dask(ws: WorkspaceDir) -> str:
    from distributed import Client

    with Client(ws.params.executor.dask_address, timeout=5) as client:
        n = len(client.scheduler_info()["workers"])
    if n == 0:
        raise RuntimeError("the scheduler has no workers")
    return f"{ws.params.executor.dask_address}: {n} worker(s)"


def run_checks(ws: WorkspaceDir, *, cheap: bool = False) -> list[dict]:
    """Every configured backend's check, in order; `cheap`: reachability only, no writes."""
    cfg = ws.mlflow
    checks: list[tuple[str, Callable[[], str | None]]] = []
    if cfg.remote:
        checks.append(("mlflow tracking server", (lambda: _tcp(cfg.tracking_uri)) if cheap else (lambda: _mlflow_server(ws))))
        if not cheap:
            checks.append(("mlflow database (gc)", lambda: _mlflow_database(ws)))
            checks.append(("mlflow artifact store", lambda: _mlflow_artifacts(ws)))
    elif not cheap:
        checks.append(("mlflow", lambda: f"embedded: {cfg.tracking_uri}"))
    remote = dvc_remote(ws.root)
    if remote.get("url", "").startswith("s3://"):
        endpoint = remote.get("endpointurl")
        checks.append(("dvc remote", (lambda: _tcp(endpoint)) if cheap and endpoint else
                       (lambda: None) if cheap else (lambda: _dvc_s3(ws, remote))))
    elif not cheap:
        checks.append(("dvc remote", lambda: f"embedded: {remote.get('url', 'none')}"))
    if ws.backends.prefect_api:
        checks.append(("prefect server", (lambda: _tcp(ws.backends.prefect_api)) if cheap else (lambda: _prefect(ws))))
    elif not cheap:
        checks.append(("prefect server", lambda: "embedded: a temporary server per command"))
    ex = ws.params.executor
    if ex.kind == "dask" and ex.dask_address:
        checks.append(("dask cluster", (lambda: _tcp(ex.dask_address)) if cheap else (lambda: _dask(ws))))
    results = []
    for name, check in checks:
        try:
            detail = check()
            results.append({"backend": name, "ok": True, "detail": detail or "reachable"})
        except Exception as err:  # every failure is a finding, reported on its line
            results.append({"backend": name, "ok": False, "detail": _why(err)})
    return results


def require_reachable(ws: WorkspaceDir, command: str) -> None:
    """Before a command writes anything: every configured remote backend answers, or one message."""
    down = [c for c in run_checks(ws, cheap=True) if not c["ok"]]
    if down:
        names = "; ".join(f"the {c['backend']} does not answer ({c['detail']})" for c in down)
        raise BackendError(f"{names}. Nothing was written; start it (or fix its address), check with "
                           f"`oblivio doctor`, then run `oblivio {command}` again.")
