"""Fixtures shared by all tests; the helpers they use live in helpers.py."""
from __future__ import annotations

import os
import subprocess
import sys

import oblivio  # noqa: F401  first: pins the numerics before numpy and torch load
import pytest

from oblivio.flows.prefect_api import free_port, start_temporary_server, stop, wait_healthy
from helpers import SHARED_API, csv_workspace


@pytest.fixture(scope="session")
def shared_prefect_server(tmp_path_factory):
    """One Prefect server on loopback for the integration tests' commands: the temporary server a
    command would start (no scheduler; `serve` tests start a full one of their own)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "true", "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    server = start_temporary_server(port, environment=env, stdout=log, stderr=subprocess.STDOUT,
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
    """`mlflow.set_tracking_uri` / `set_registry_uri` (in-process registry reads) keep the URI in
    module globals and export it to os.environ, where it would point the next test (in this
    process: the order differs under xdist) at another workspace: reset both after each test."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)



def pytest_collection_modifyitems(config, items):
    """Production tests first, then integration, then unit: under xdist the work units are handed
    out in this order (see `pytest_xdist_make_scheduler`), longest first, short ones at the end."""
    rank = {"production": 0, "integration": 1}
    items.sort(key=lambda item: rank.get(item.path.parent.name, 2))


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two xdist workers. One unit of work is a test module, so its module-scoped
    workspaces are trained once, except the production tests, which are one unit together, so the
    loopback stack starts once; units go out in collection order. (xdist's own `--dist loadgroup`
    marks no longer take effect under pytest 9, which ignores the node id they rewrite.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/production" if path.startswith("tests/production/") else path

    config.option.loadscopereorder = False
    return ByModule(config, log)
