"""Recording outputs with DVC (`lineage.record`) on a real DVC repository and local remote."""
from __future__ import annotations

from pathlib import Path

import pytest

from oblivio import lineage
from oblivio.config import parse_yaml
from oblivio.workspace import set_dvc_remote

OURS = """stages:
  a:
    cmd: echo a
    outs: [a.txt]
  b:
    cmd: echo b
    outs: [b.txt]
"""
WITH_A_STAGE_OF_THEIRS = OURS + """  c:
    cmd: echo c
    outs: [c.txt]
"""


@pytest.fixture
def repo(tmp_path) -> Path:
    from dvc.repo import Repo

    root = tmp_path / "ws"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    set_dvc_remote(root, "local", "../remote")  # relative to .dvc/: <root>/remote
    (root / "dvc.yaml").write_text(OURS)
    for name in "abc":
        (root / f"{name}.txt").write_text(f"{name} 1\n")
    return root


def _locked(root: Path) -> dict[str, str]:
    stages = parse_yaml((root / "dvc.lock").read_text())["stages"]
    return {name: stage["outs"][0]["md5"] for name, stage in stages.items()}


def _pushed(root: Path) -> set[str]:
    return {"".join(p.parts[-2:]) for p in (root / "remote").rglob("*") if p.is_file()}


def test_recording_every_stage_commits_and_pushes_each_output(repo):
    hashes = lineage.record(repo, ["b", "a"])
    assert set(_locked(repo)) == {"a", "b"}
    assert hashes == {"a.txt": _locked(repo)["a"], "b.txt": _locked(repo)["b"]}
    assert set(hashes.values()) <= _pushed(repo)
    (repo / "a.txt").write_text("a 2\n")
    changed = lineage.record(repo, ["a", "b"])
    assert changed["a.txt"] != hashes["a.txt"] and changed["b.txt"] == hashes["b.txt"]
    assert changed["a.txt"] in _pushed(repo)


def test_a_stage_someone_added_is_not_committed_with_ours(repo):
    """dvc.yaml may hold a user's own stage: recording ours must neither lock nor push its output."""
    (repo / "dvc.yaml").write_text(WITH_A_STAGE_OF_THEIRS)
    hashes = lineage.record(repo, ["a", "b"])
    assert set(_locked(repo)) == {"a", "b"}
    assert "c.txt" not in hashes
    assert hashes["a.txt"] in _pushed(repo) and len(_pushed(repo)) == 2
