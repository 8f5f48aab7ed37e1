"""The production stack on loopback, started once per test session (oblivio.loopback).

Every service is a real process; the fixture stops each one it started, also when a
test or the start itself fails. Without PostgreSQL's binaries (or root, for `runuser`)
the production tests are skipped: the one skip this suite allows.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from canary import SUBJECT, marked_table, object_hits
from helpers import FAST, TEST_SECRET, set_params
from link import Link
from prodstack import objects, prod_cli, production_workspace, registry

pytestmark = pytest.mark.production


_running: list = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Idle, the stack's servers and workers still take CPU from the tests that follow in this process:
    stop it after the last production test (the fixture's own stop, at the end, is then a no-op)."""
    if _running and (nextitem is None or nextitem.path.parent != item.path.parent):
        _running.pop().stop()


@pytest.fixture(scope="session")
def stack():
    from oblivio.loopback import LoopbackStack, postgres_available

    if not postgres_available():
        pytest.skip("PostgreSQL 15 binaries (or root for runuser) are not available on this machine")
    # not under pytest's 0700 tmp: the postgres user must traverse every parent of its data directory
    base = Path(tempfile.mkdtemp(prefix="oblivio-loopback-"))
    stack = LoopbackStack(base)
    _running.append(stack)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_link(stack):
    """The workspace reaches S3 through this link, so a test can cut it (moto itself keeps running)."""
    link = Link(stack.ports["s3"]).mend()
    yield link
    link.cut()


@pytest.fixture(scope="session")
def erased(stack, s3_link, tmp_path_factory):
    """Train on Dask with the marked person in the table, then erase them with `forget --wait`."""
    root = tmp_path_factory.mktemp("production")
    source = root / "upstream.csv"
    marked_table().to_csv(source, index=False)
    ws = production_workspace(stack, root, name="purge", **{"--s3-endpoint": s3_link.url})
    (ws / ".oblivio" / "secret").write_text(TEST_SECRET + "\n")
    set_params(ws, {**FAST, "executor": {"kind": "dask"},  # the address init wrote stays
                    "data": {"source": str(source), "min_rows": 50,
                             "columns": {"record_id": "rid", "subject_id": "person", "label": "y",
                                         "features": ["a", "b", "c"]}}})
    before = json.loads(prod_cli(stack, ws, "run", "--json").stdout)
    model_name = yaml.safe_load((ws / "mlflow.yaml").read_text())["model_name"]
    old = registry(stack).get_model_version(model_name, before["model_version"])
    from oblivio.tracking import logged_model_id

    planted = [k for k, v in objects(stack).items() if object_hits(k, v)]
    result = json.loads(prod_cli(stack, ws, "forget", "--subject", SUBJECT, "--wait", "--json").stdout)
    return {"ws": ws, "before": before, "result": result, "model_name": model_name,
            "old_model_id": logged_model_id(old),
            "old_run_id": old.run_id, "planted": planted}
