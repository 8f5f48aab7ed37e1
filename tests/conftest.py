"""Fixtures shared by all tests; the helpers they use live in helpers.py."""
from __future__ import annotations

import os
import subprocess
import sys

import oblivio  # noqa: F401  first: pins the numerics before numpy and torch load
import pytest

from oblivio.flows.prefect_api import free_port, stop, wait_healthy
from helpers import SHARED_API, csv_workspace


@pytest.fixture(scope="session")
def shared_prefect_server(tmp_path_factory):
    """One `prefect server start` on loopback for the integration tests' commands."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "true", "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    assert wait_healthy(server, url, timeout=120), (home / "server.log").read_text()[-3000:]
    os.environ[SHARED_API] = url
    yield url
    os.environ.pop(SHARED_API, None)
    stop(server, timeout=30)
    log.close()


@pytest.fixture
def make_csv_workspace(tmp_path):
    return lambda **kw: csv_workspace(tmp_path, **kw)


@pytest.fixture(autouse=True)
def no_leaked_mlflow_uris():
    """`mlflow.set_tracking_uri` (in-process registry reads) exports the URI to os.environ,
    where it would override the next test's workspace `mlflow.yaml`: drop it after each test."""
    yield
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
