"""The only module that calls DVC.

The pipeline computes its stages itself (in parallel, under Prefect) and then records
their outputs with `dvc commit`, so `dvc.lock` holds the data and model versions and
`dvc dag` / `dvc status` agree with what ran. DVC is driven through its CLI: its Python
API is read-only.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from oblivio.errors import WorkspaceError


def _dvc(root: Path, *args: str) -> str:
    exe = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    result = subprocess.run([exe, *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise WorkspaceError(f"`dvc {' '.join(args)}` failed in {root}:\n{(result.stderr or result.stdout).strip()}")
    return result.stdout


def commit(root: Path, *stages: str) -> None:
    """Record the current outputs of `stages` in dvc.lock and the DVC cache."""
    _dvc(root, "commit", "--force", "--quiet", *stages)


def push(root: Path) -> None:
    """Copy cached objects to the default remote (the workspace-local one by default)."""
    _dvc(root, "push", "--quiet")


def garbage_collect(root: Path) -> None:
    """Drop every cache and remote object the current workspace does not reference.

    `-w` alone: `-A`/`-a`/`-T` would keep old versions, and with them erased records.
    """
    _dvc(root, "gc", "--workspace", "--cloud", "--force", "--quiet")


def output_hashes(root: Path) -> dict[str, str]:
    """`{output path: md5}` from dvc.lock (directories end in `.dir`)."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    hashes = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs", []):
            if "md5" in out:
                hashes[out["path"]] = out["md5"]
    return hashes


def dataset_version(root: Path) -> str:
    """The DVC hash of the training partitions: the identity of a data version."""
    return output_hashes(root).get("data/shards", "")


def record(root: Path, stages: list[str]) -> dict[str, str]:
    """Commit the stages' outputs and push them; returns every output's hash."""
    commit(root, *stages)
    push(root)
    return output_hashes(root)


def status(root: Path) -> str:
    return _dvc(root, "status")
