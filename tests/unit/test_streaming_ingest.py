"""Ingest streams its source: batches must not change a byte, a verdict, or the memory bound."""
from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from oblivio import ingestion
from oblivio.data.sharding import Layout, place, write_dataset
from oblivio.keys import record_key, subject_key
from oblivio.data.sources import load_source
from oblivio.data.validate import numpy_numeric
from oblivio.errors import ValidationFailed
from oblivio.workspace import WorkspaceDir

SECRET = "5eed" * 16
DUP_ID = "dup-ZZT-441"
FEATURES = ["a", "k", "b"]


def table(n: int, seed: int = 0, wide: int = 0) -> pd.DataFrame:
    """Several rows per person; `k` is an integer column whose only null is near the end,
    so early batches read it as int64 and the whole file as float64. `wide` more features."""
    rng = np.random.default_rng(seed)
    k = pd.array(rng.integers(0, 9, n), dtype="Int64")
    k[n - 3] = pd.NA
    extra = {f"w{i}": rng.normal(size=n) for i in range(wide)}
    return pd.DataFrame({
        "rid": [f"r-{i}" for i in range(n)],
        "person": 100000 + rng.integers(0, n // 3, n),
        "y": rng.integers(0, 2, n),
        "a": rng.normal(size=n),
        "k": k,
        "b": rng.integers(0, 2, n),
        "note": ["free text"] * n,  # undeclared columns are ignored
        **extra,
    })


def workspace(root: Path, frame: pd.DataFrame, suffix: str = ".csv", shards: int = 4, **data) -> Path:
    """A bare workspace (params and secret are all ingest reads) on a CSV or Parquet file."""
    root.mkdir(parents=True)
    (root / ".oblivio").mkdir()
    (root / ".oblivio" / "secret").write_text(SECRET + "\n")
    source = root / f"table{suffix}"
    if suffix == ".csv":
        frame.to_csv(source, index=False)
    else:
        frame.to_parquet(source, index=False, row_group_size=97)
    params = {"data": {"source": source.name, "min_rows": 20, "holdout_fraction": 0.25,
                       "columns": {"record_id": "rid", "subject_id": "person", "label": "y",
                                   "features": [*FEATURES, *(c for c in frame if c.startswith("w"))]},
                       **data},
              "sisa": {"shards": shards, "slices": 3}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def digests(root: Path) -> dict[str, str]:
    data = root / "data"
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Spill or staging directories ingest should have removed."""
    return [p.name for d in (root / ".oblivio", root / "data") if d.exists()
            for p in d.iterdir() if p.name.startswith(("spill-", ".staging-"))]


def whole_table_ingest(root: Path, erased: tuple[frozenset[str], frozenset[str]]) -> None:
    """What ingest did before it streamed: the whole table in one frame, placed and written at once."""
    ws = WorkspaceDir(root)
    data = ws.params.data
    cols = data.columns
    df = numpy_numeric(load_source(data.source, ws.root), cols.features)
    if data.limit_subjects:
        df = ingestion.limit_subjects(df, cols.subject_id, data.limit_subjects, ws.secret)
    df, _ = ingestion.drop_tombstoned(df, ws, subjects=erased[0], records=erased[1])
    keep = [cols.record_id, cols.subject_id, cols.label, *cols.features]
    train, holdout = place(df[keep], cols, ws.secret, shards=ws.params.sisa.shards, slices=ws.params.sisa.slices,
                           holdout_fraction=data.holdout_fraction)
    layout = Layout(shards=ws.params.sisa.shards, slices=ws.params.sisa.slices, placement=ws.params.sisa.placement)
    write_dataset(train, holdout, shards_dir=ws.shards_dir, holdout_path=ws.holdout_path, layout=layout)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("limit", [0, 150])
def test_tiny_batches_write_the_bytes_of_the_whole_table(tmp_path, monkeypatch, suffix, limit) -> None:
    frame = table(600)
    secret = bytes.fromhex(SECRET)
    erased = (frozenset({subject_key(secret, str(frame["person"].iloc[5]))}),
              frozenset({record_key(secret, frame["rid"].iloc[400])}))
    monkeypatch.setattr(ingestion, "tombstones", lambda ws: erased)
    roots = {name: workspace(tmp_path / name, frame, suffix, limit_subjects=limit) for name in ("tiny", "one", "whole")}

    tiny = ingestion.ingest(roots["tiny"], batch_rows=41)
    one = ingestion.ingest(roots["one"], batch_rows=10**6)
    whole_table_ingest(roots["whole"], erased)

    assert tiny == one
    if not limit:
        assert tiny["n_dropped_tombstoned"] > 1
    assert sum(tiny["shard_sizes"]) == tiny["n_records"] > 0
    assert digests(roots["tiny"]) == digests(roots["one"]) == digests(roots["whole"])
    assert leftovers(roots["tiny"]) == []


def test_a_duplicate_id_in_two_batches_is_rejected_and_nothing_is_written(tmp_path) -> None:
    frame = table(300)
    frame.loc[[10, 290], "rid"] = DUP_ID  # batches 0 and 5 of 50 rows
    root = workspace(tmp_path / "ws", frame)
    with pytest.raises(ValidationFailed) as exc:
        ingestion.ingest(root, batch_rows=50)
    msg = str(exc.value)
    assert "1 of 12 expectations not met" in msg
    assert "expect_column_values_to_be_unique on rid: 2 unexpected value(s) (0.67 %)" in msg
    assert "Nothing was written" in msg and DUP_ID not in msg and DUP_ID not in repr(exc.value.report)
    assert not (root / "data").exists()
    assert leftovers(root) == []


def test_a_bad_value_in_the_last_batch_leaves_the_old_dataset_whole(tmp_path) -> None:
    frame = table(300)
    root = workspace(tmp_path / "ws", frame)
    ingestion.ingest(root, batch_rows=50)
    before = digests(root)
    frame.loc[299, "y"] = 7
    frame.to_csv(root / "table.csv", index=False)
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_be_in_set on y: 1 unexpected value\(s\)"):
        ingestion.ingest(root, batch_rows=50)
    assert digests(root) == before
    assert leftovers(root) == []


def test_the_null_share_is_judged_over_the_whole_table_not_per_batch(tmp_path) -> None:
    frame = table(300).assign(a=lambda f: f["a"].where(f.index >= 60))  # batch 0 all null; 60 / 300 = 20 %
    root = workspace(tmp_path / "ws", frame, max_null_fraction=0.2)
    summary = ingestion.ingest(root, batch_rows=50)["validation"]
    assert (summary["evaluated"], summary["passed"]) == (12, 12)
    assert summary["null_fraction"]["a"] == 0.2  # judged, and reported, over the whole table
    frame.loc[60, "a"] = np.nan
    frame.to_csv(root / "table.csv", index=False)
    with pytest.raises(ValidationFailed, match=r"not_be_null on a: 61 unexpected value\(s\) \(20.33 %\)"):
        ingestion.ingest(root, batch_rows=50)


def peak_python_bytes(root: Path, batch_rows: int) -> int:
    tracemalloc.start()
    try:
        ingestion.ingest(root, batch_rows=batch_rows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_follows_the_shard_not_the_table(tmp_path) -> None:
    """8x the rows in 8x the shards: shards of one size, so nearly the same peak.

    Whole-table ingest held the table several times over (8x the rows, 8x the peak);
    now what grows with the table is 16 bytes a row, the record-id hashes that the
    uniqueness check keeps.
    """
    warm = workspace(tmp_path / "warm", table(300), ".parquet")
    ingestion.ingest(warm, batch_rows=100)  # imports and first-use caches are not the table's
    small = workspace(tmp_path / "small", table(10_000, wide=4), ".parquet", shards=2, holdout_fraction=0.02)
    big = workspace(tmp_path / "big", table(80_000, seed=1, wide=4), ".parquet", shards=16, holdout_fraction=0.02)
    small_peak, big_peak = peak_python_bytes(small, 10_000), peak_python_bytes(big, 10_000)
    assert big_peak < 3 * small_peak, (small_peak, big_peak)


def test_spill_and_staging_left_by_a_killed_ingest_are_swept_by_the_next(tmp_path) -> None:
    """Both hold raw rows; an ingest killed mid-way must not leave them for good."""
    root = workspace(tmp_path / "ws", table(120))
    for stale in (root / ".oblivio" / "spill-killed" / "shard=0", root / "data" / ".staging-killed" / "shards"):
        stale.mkdir(parents=True)
        (stale / "0.pkl").write_bytes(b"rows of real people")
    ingestion.ingest(root, batch_rows=50)
    assert leftovers(root) == []
