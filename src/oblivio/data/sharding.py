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
from oblivio.data.columns import RECORD_KEY, SHARD, SLICE, SUBJECT_KEY
from oblivio.keys import keyed_int, record_key, subject_key
HASH_SPACE = 2**64


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
    """Write `df` as Parquet; the bytes depend on its rows alone.

    Columns are made contiguous first: a column joined from batches is several Arrow
    chunks, and Parquet pages would otherwise follow the chunk edges.
    """
    table = pa.Table.from_pandas(df, preserve_index=False).combine_chunks()
    pq.write_table(table, path, compression="zstd")


def write_dataset(train: pd.DataFrame, holdout: pd.DataFrame, *, shards_dir: Path, holdout_path: Path, shards: int) -> None:
    """Replace the partitioned dataset and the holdout file together (see `DatasetWriter`)."""
    with DatasetWriter(shards_dir=shards_dir, holdout_path=holdout_path) as out:
        for k in range(shards):
            out.write_shard(k, train[train[SHARD] == k])
        out.write_holdout(holdout)
        out.commit()


class DatasetWriter:
    """A new partitioned dataset, staged beside the old one and swapped in by `commit`.

    Shards are written one at a time, so only one shard's rows need be in memory. An
    exception leaves the old dataset whole (the old shards are restored); after a hard
    crash the next ingest rewrites both from the source. A partition whose rows did not
    change keeps its file untouched, so DVC stores new bytes only for changed shards.
    """

    def __init__(self, *, shards_dir: Path, holdout_path: Path):
        self.shards_dir, self.holdout_path = shards_dir, holdout_path
        shards_dir.parent.mkdir(parents=True, exist_ok=True)
        DatasetWriter.sweep(shards_dir.parent)
        self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=shards_dir.parent))
        self.previous = shards_dir.with_name(f".{shards_dir.name}.old")
        (self.staging / "shards").mkdir()

    @staticmethod
    def sweep(data_dir: Path) -> None:
        """Remove staging a killed ingest left behind: rows of real people, in no dataset.

        Only one data-changing command runs at a time per workspace, so none is in use.
        """
        for leftover in data_dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.previous, ignore_errors=True)

    def write_shard(self, k: int, rows: pd.DataFrame) -> None:
        """Shard k's partition, rows ordered by slice then record key."""
        part = rows.sort_values([SLICE, RECORD_KEY], kind="stable").reset_index(drop=True)
        dest = shard_path(self.staging / "shards", k)
        dest.parent.mkdir()
        old = shard_path(self.shards_dir, k)
        if old.exists() and _same_rows(old, part):
            shutil.copy2(old, dest)
        else:
            _write_table(part, dest)

    def write_holdout(self, rows: pd.DataFrame) -> None:
        _write_table(rows, self.staging / "holdout.parquet")

    def commit(self) -> None:
        """Swap the staged shards and holdout in for the old ones."""
        new_dir = self.staging / "shards"
        shutil.rmtree(self.previous, ignore_errors=True)
        if self.shards_dir.exists():
            os.replace(self.shards_dir, self.previous)
        try:
            os.replace(new_dir, self.shards_dir)
            os.replace(self.staging / "holdout.parquet", self.holdout_path)
        except BaseException:
            if self.previous.exists():
                shutil.rmtree(self.shards_dir, ignore_errors=True)
                os.replace(self.previous, self.shards_dir)
            raise


class Spill:
    """Placed rows parked on disk by shard while a source streams in.

    Ingest reads the source a batch at a time but writes each partition whole; the
    spill holds the rows in between, so memory holds one batch, then one shard. Pickle
    keeps every value and dtype exactly as placed, so a partition's bytes do not depend
    on how the source was batched. The directory (personal data) goes on exit.
    """

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        Spill.sweep(directory)
        self.dir = Path(tempfile.mkdtemp(prefix="spill-", dir=directory))
        self._pieces = 0
        self._empty: dict[str, pd.DataFrame] = {}  # a zero-row frame of each kind, for shards left empty
        self.train_rows = 0
        self.holdout_rows = 0

    @staticmethod
    def sweep(directory: Path) -> int:
        """Remove spills an ingest killed mid-way left behind (personal data); returns how many.

        Only one data-changing command runs at a time per workspace, so none is in use.
        """
        stale = list(directory.glob("spill-*"))
        for leftover in stale:
            shutil.rmtree(leftover, ignore_errors=True)
        return len(stale)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def add(self, train: pd.DataFrame, holdout: pd.DataFrame) -> None:
        """One batch's placed rows (see `place`)."""
        self._empty.setdefault("train", train.iloc[:0])
        self._empty.setdefault("holdout", holdout.iloc[:0])
        for k, rows in train.groupby(SHARD, sort=True):
            self._park(f"shard={k}", rows)
        if len(holdout):
            self._park("holdout", holdout)
        self.train_rows += len(train)
        self.holdout_rows += len(holdout)

    def shard(self, k: int) -> pd.DataFrame:
        return self._gather(f"shard={k}", "train")

    def holdout(self) -> pd.DataFrame:
        """The held-out rows, sorted by record key as `place` sorts them."""
        rows = self._gather("holdout", "holdout")
        return rows.sort_values(RECORD_KEY, kind="stable").reset_index(drop=True)

    def _park(self, name: str, rows: pd.DataFrame) -> None:
        (self.dir / name).mkdir(exist_ok=True)
        rows.to_pickle(self.dir / name / f"{self._pieces}.pkl")
        self._pieces += 1

    def _gather(self, name: str, kind: str) -> pd.DataFrame:
        files = sorted((self.dir / name).glob("*.pkl"), key=lambda f: int(f.stem)) if (self.dir / name).exists() else []
        if not files:
            return self._empty[kind]
        return pd.concat([pd.read_pickle(f) for f in files], ignore_index=True)


def _same_rows(path: Path, df: pd.DataFrame) -> bool:
    try:
        old = pq.read_table(path).to_pandas()
    except Exception:
        return False
    return old.shape == df.shape and list(old.columns) == list(df.columns) and old.equals(df)


def shard_path(shards_dir: Path, shard: int) -> Path:
    return shards_dir / f"shard={shard}" / "part.parquet"


def read_shard(shards_dir: Path, shard: int, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(shard_path(shards_dir, shard), columns=columns).to_pandas()


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
