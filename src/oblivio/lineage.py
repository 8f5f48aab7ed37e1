"""The only module that calls DVC.

The pipeline computes its stages itself (in parallel, under Prefect) and then records
their outputs with `dvc commit`, so `dvc.lock` holds the data and model versions and
`dvc dag` / `dvc status` agree with what ran. The calls are the ones DVC's own commands
make (`dvc commit --force`, `dvc push`, `dvc gc -w -c -f`), made in-process on
`dvc.repo.Repo`: a `dvc` subprocess costs about 0.7 s of interpreter start each, and an
erasure makes three of them.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oblivio.config import parse_yaml
from oblivio.errors import WorkspaceError

PIPELINE_FILE = "dvc.yaml"


def _with_repo(root: Path, what: str, call: Callable[[Any], Any]) -> Any:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.ERROR)  # `--quiet`: DVC's progress is not the user's business
    try:  # DVC resolves stage and output paths from the working directory, as `dvc --cd` does
        with contextlib.chdir(root), Repo(str(root)) as repo:
            return call(repo)
    except DvcException as err:
        raise WorkspaceError(f"`dvc {what}` failed in {root}: {err}") from err


def _commit_and_push(repo, stages: list[str]) -> None:
    """Record the stages' current outputs in dvc.lock and the cache, then copy the cache
    to the default remote (the workspace-local one by default).

    Each `commit` call parses and rewrites dvc.lock, most of its cost; committing dvc.yaml
    as a whole writes it once. That is only done when the stages are all of dvc.yaml's: a
    stage someone added there is not ours to force-commit."""
    if sorted(stages) == sorted(stage.name for stage in repo.stage.collect(PIPELINE_FILE)):
        repo.commit(PIPELINE_FILE, force=True)
    else:
        for stage in stages:
            repo.commit(stage, force=True)
    repo.push()


def load_pipeline(root: Path) -> None:
    """Open the repository and read its pipeline (dvc.yaml, dvc.lock), changing nothing: what
    a long-lived process calls once so that its first commit does not load DVC's modules."""
    _with_repo(root, "status", lambda repo: repo.index)


def garbage_collect(root: Path) -> None:
    """Drop every cache and remote object the current workspace does not reference.

    `workspace` alone: all branches, tags or commits would keep old versions, and with
    them erased records.
    """
    try:
        _with_repo(root, "gc", lambda repo: repo.gc(workspace=True, cloud=True, force=True))
    except WorkspaceError:
        raise
    except Exception as err:  # the remote's own errors (an S3 endpoint that does not answer) are not DVC's
        raise WorkspaceError(f"`dvc gc -w -c` could not clean the DVC remote; erased data may remain there until "
                             f"the next run: {type(err).__name__}: {err}") from err


def output_hashes(root: Path) -> dict[str, str]:
    """`{output path: md5}` from dvc.lock (directories end in `.dir`)."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    data = parse_yaml(lock.read_text()) or {}
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
    _with_repo(root, "commit + push", lambda repo: _commit_and_push(repo, stages))
    return output_hashes(root)
