"""Place every record in a shard and a slice, and write the shard-partitioned dataset.

- shard  = keyed hash of the *subject* mod S: all rows of one person share a shard,
           so erasing a person retrains one shard;
- slice  = keyed hash of the *record* mod R: every record sits in exactly one slice
           (no trailing rows left out), so a deletion names the first slice to retrain;
- split  = keyed hash of the subject against `holdout_fraction`: no person is on both
           the training and the held-out side.
Rows are sorted by their keyed record hash, so the order does not depend on the source.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from oblivio.config import Columns
from oblivio.keys import keyed_hash, keyed_int

# Columns Oblivio adds; they never hold a raw id.
SHARD, SLICE, RECORD_KEY, SUBJECT_KEY = "_shard", "_slice", "_record_key", "_subject_key"
PLACEMENT_COLUMNS = (SHARD, SLICE, RECORD_KEY, SUBJECT_KEY)
HASH_SPACE = 2**64


def subject_key(secret: bytes, subject_id: object) -> str:
    """The keyed hash that names a person in the ledger, certificates and logs."""
    return keyed_hash(secret, "subject", subject_id)


def record_key(secret: bytes, record_id: object) -> str:
    """The keyed hash that names a record in commitments and certificates."""
    return keyed_hash(secret, "record", record_id)


def is_holdout(secret: bytes, subject_id: object, fraction: float) -> bool:
    return keyed_int(secret, "split", subject_id) < fraction * HASH_SPACE


def place(df: pd.DataFrame, columns: Columns, secret: bytes, *, shards: int, slices: int, holdout_fraction: float
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows with shard/slice/keys, held-out rows with keys), both sorted by record key."""
    subjects = df[columns.subject_id].astype(str)
    records = df[columns.record_id].astype(str)
    uniq = subjects.unique()
    holdout_of = {s: is_holdout(secret, s, holdout_fraction) for s in uniq}
    shard_of = {s: keyed_int(secret, "shard", s) % shards for s in uniq}
    placed = df.copy()
    placed[SUBJECT_KEY] = subjects.map({s: subject_key(secret, s) for s in uniq})
    placed[RECORD_KEY] = [record_key(secret, r) for r in records]
    placed[SHARD] = subjects.map(shard_of).astype("int64")
    placed[SLICE] = [keyed_int(secret, "slice", r) % slices for r in records]
    placed[SLICE] = placed[SLICE].astype("int64")
    held = subjects.map(holdout_of).to_numpy(bool)
    train = placed[~held].sort_values(RECORD_KEY, kind="stable").reset_index(drop=True)
    holdout = placed[held].drop(columns=[SHARD, SLICE]).sort_values(RECORD_KEY, kind="stable").reset_index(drop=True)
    return train, holdout


def _write_table(df: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def write_dataset(train: pd.DataFrame, holdout: pd.DataFrame, *, shards_dir: Path, holdout_path: Path, shards: int) -> None:
    """Replace the partitioned dataset and the holdout file together.

    An exception leaves the old dataset whole (the old shards are restored); after a
    hard crash the next ingest rewrites both from the source. A partition whose rows did
    not change keeps its file untouched, so DVC stores new bytes only for changed shards.
    """
    shards_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=shards_dir.parent))
    previous = shards_dir.with_name(f".{shards_dir.name}.old")
    try:
        new_dir = staging / "shards"
        new_dir.mkdir()
        for k in range(shards):
            part = train[train[SHARD] == k].sort_values([SLICE, RECORD_KEY], kind="stable").reset_index(drop=True)
            dest = new_dir / f"shard={k}" / "part.parquet"
            dest.parent.mkdir()
            old = shards_dir / f"shard={k}" / "part.parquet"
            if old.exists() and _same_rows(old, part):
                shutil.copy2(old, dest)
            else:
                _write_table(part, dest)
        _write_table(holdout, staging / "holdout.parquet")
        shutil.rmtree(previous, ignore_errors=True)
        if shards_dir.exists():
            os.replace(shards_dir, previous)
        try:
            os.replace(new_dir, shards_dir)
            os.replace(staging / "holdout.parquet", holdout_path)
        except BaseException:
            if previous.exists():
                shutil.rmtree(shards_dir, ignore_errors=True)
                os.replace(previous, shards_dir)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)


def _same_rows(path: Path, df: pd.DataFrame) -> bool:
    try:
        old = pq.read_table(path).to_pandas()
    except Exception:
        return False
    return old.shape == df.shape and list(old.columns) == list(df.columns) and old.equals(df)


def read_shard(shards_dir: Path, shard: int) -> pd.DataFrame:
    return pq.read_table(shards_dir / f"shard={shard}" / "part.parquet").to_pandas()


def read_holdout(holdout_path: Path) -> pd.DataFrame:
    return pq.read_table(holdout_path).to_pandas()


def rewrite_partition(path: Path, keep: pd.DataFrame) -> None:
    """Atomically replace one partition file with the rows to keep."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_table(keep, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
