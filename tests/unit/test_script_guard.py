"""A script that calls Oblivio at its top level, re-run by a `spawn`ed worker (oblivio/script_guard.py)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = """
    import multiprocessing, os, sys
    from oblivio import Workspace, OblivioError

    try:
        Workspace.open({workspace!r})
        print("opened in", "worker" if multiprocessing.parent_process() else "parent", flush=True)
    except OblivioError as err:
        print("refused:", err, flush=True)
        sys.exit(2)
    if multiprocessing.parent_process() is None:   # the parent starts one worker, as training does
        worker = multiprocessing.get_context("spawn").Process(target=os.getpid)
        worker.start(); worker.join()
        print("worker exit", worker.exitcode, flush=True)
"""


def test_a_spawned_worker_rerunning_an_unguarded_script_is_refused_with_the_fix(tmp_path):
    from oblivio import Workspace

    Workspace.init(tmp_path / "ws")
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(SCRIPT.format(workspace=str(tmp_path / "ws"))))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120).stdout
    assert "opened in parent" in out
    assert "opened in worker" not in out
    assert 'refused: This script calls Oblivio at its top level' in out and '__name__ == "__main__"' in out
    assert "worker exit 2" in out


def test_the_guard_lets_ordinary_callers_through(tmp_path):
    from oblivio import Workspace

    Workspace.init(tmp_path / "ws")
    assert Workspace.open(tmp_path / "ws").root == (tmp_path / "ws").resolve()
