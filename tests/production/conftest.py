"""The production stack on loopback, started once per test session (oblivio.loopback).

Every service is a real process; the fixture stops each one it started, also when a
test or the start itself fails. Without PostgreSQL's binaries (or root, for `runuser`)
the production tests are skipped: the one skip this suite allows.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import cli

pytestmark = pytest.mark.production


@pytest.fixture(scope="session")
def stack():
    from oblivio.loopback import LoopbackStack, postgres_available

    if not postgres_available():
        pytest.skip("PostgreSQL 15 binaries (or root for runuser) are not available on this machine")
    # not under pytest's 0700 tmp: the postgres user must traverse every parent of its data directory
    base = Path(tempfile.mkdtemp(prefix="oblivio-loopback-"))
    stack = LoopbackStack(base)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def prod_cli(stack, ws, *args, check: bool = True, env: dict | None = None):
    """`oblivio ARGS` with the stack's credentials in the environment; the workspace names the servers."""
    return cli(ws, *args, check=check, env={**stack.client_environment(), **(env or {})}, embedded=True)


def production_workspace(stack, root, *, name: str = "ws", **overrides):
    """`oblivio init --profile production` against the loopback stack (a fresh DVC prefix per workspace)."""
    flags = {"--mlflow-uri": stack.mlflow_uri, "--mlflow-database": stack.database_uri("mlflow", password=False),
             "--dvc-remote": f"s3://dvc/{name}", "--s3-endpoint": stack.s3_endpoint,
             "--prefect-api": stack.prefect_api, "--dask-address": stack.dask_address, **overrides}
    ws = root / name
    args = [a for flag, value in flags.items() if value is not None for a in (flag, value)]
    cli(None, "init", str(ws), "--profile", "production", *args)
    return ws
