"""Arguments a user can get wrong: one message each, a non-zero exit, no traceback, nothing recorded."""
from __future__ import annotations

import time

import pytest

from helpers import cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("args") / "ws"
    cli(None, "init", str(root))
    return root


@pytest.mark.parametrize("args, message", [
    (("verify", "--replay", "-1"), "argument --replay: must be >= 0, got -1"),
    (("verify", "--replay", "two"), "argument --replay: must be a whole number, got 'two'"),
    (("process", "--workers", "0"), "argument --workers: must be >= 1, got 0"),
    (("review", "0"), "must be >= 1"),
    (("scenario", "backdoor", "--fraction", "1.5"), "must be a share in (0, 1], got 1.5"),
    (("process", "--executor", "dask", "--dask-address", "tcp://127.0.0.1:9"),
     "No Dask scheduler answers at tcp://127.0.0.1:9"),
    (("process", "--executor", "dask", "--dask-address", "scheduler-without-port"), "write it as tcp://HOST:PORT"),
    (("process", "--dask-address", "tcp://127.0.0.1:9"), "--dask-address needs --executor dask"),
    (("serve", "--port", "70000"), "must be in 1..65535"),
    (("forget", "--subject", "1", "--wait", "--executor", "dask", "--dask-address", "tcp://127.0.0.1:9"),
     "No Dask scheduler answers"),
])
def test_one_message_no_traceback(ws, args, message):
    began = time.monotonic()
    proc = cli(ws, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr) < 600 and time.monotonic() - began < 15  # not Dask's 30 s wait and 2,000 characters
    assert "no requests" in cli(ws, "requests").stdout  # a refused forget recorded nothing
