"""Place every record in a shard and a slice, and write the shard-partitioned dataset.

- shard  = keyed hash of the *subject* mod S: all rows of one person share a shard,
           so erasing a person retrains one shard;
- slice  = where the record was first placed, kept for good: at a workspace's first
           ingest (or `run --reslice`) the keyed hash of the subject mod R (`sisa.placement:
           subject`; `record` hashes each record alone); a record that arrives in a later
           ingest goes to the newest slice R-1, so the slices before it, their commitments
           and their checkpoints do not change and a growth run retrains one stage per shard.
           The slice is stored in the partition row (`_slice`) and `placement.json` says how
           the layout was made; a record's slice never depends on what else is in the table;
- split  = keyed hash of the subject against `holdout_fraction`: no person is on both
           the training and the held-out side.
Rows are sorted by their keyed record hash, so the order does not depend on the source.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from oblivio.config import Columns
from oblivio.data.columns import RECORD_KEY, SHARD, SLICE, SUBJECT_KEY
from oblivio.keys import keyed_int, record_key, subject_key

HASH_SPACE = 2**64
LAYOUT_FILE = "placement.json"  # inside the shards directory: versioned with the partitions


@dataclass(frozen=True)
class Layout:
    """How the partitions' slices were assigned; growth ingests keep it, `--reslice` makes a new one."""

    shards: int
    slices: int
    placement: str  # subject | record: the rule of the first placement (later arrivals: newest slice)

    def first_slice(self, secret: bytes, subject_id: object, record_id: object) -> int:
        """The slice a record gets when its layout is made."""
        return keyed_int(secret, "slice", subject_id if self.placement == "subject" else record_id) % self.slices


def read_layout(shards_dir: Path) -> Layout | None:
    """The current partitions' layout; None when there are none. Partitions written before
    layouts were recorded were placed record by record."""
    path = shards_dir / LAYOUT_FILE
    if path.exists():
        return Layout(**json.loads(path.read_text()))
    parts = sorted(shards_dir.glob("shard=*/part.parquet")) if shards_dir.exists() else []
    if not parts:
        return None
    slices = max(int(pq.read_table(p, columns=[SLICE]).column(0).to_numpy().max(initial=0)) for p in parts) + 1
    return Layout(shards=len(parts), slices=slices, placement="record")


def settle_slices(rows: pd.DataFrame, placed: pd.DataFrame | None, n_slices: int) -> tuple[pd.DataFrame, int]:
    """(rows with their final slice, how many arrived now): a record the previous partition
    holds keeps its slice there; one it does not hold goes to the newest slice.

    `placed`: the previous partition's (record key, slice) columns, or None when this ingest
    makes a new layout (every row keeps the slice `place` gave it).
    """
    if placed is None:
        return rows, 0
    previous = pd.Series(placed[SLICE].to_numpy(), index=placed[RECORD_KEY].to_numpy())
    kept = rows[RECORD_KEY].map(previous)
    arrived = int(kept.isna().sum())
    out = rows.copy()
    out[SLICE] = kept.fillna(n_slices - 1).astype("int64").to_numpy()
    return out, arrived


def is_holdout(secret: bytes, subject_id: object, fraction: float) -> bool:
    return keyed_int(secret, "split", subject_id) < fraction * HASH_SPACE


def shard_of(secret: bytes, subject_id: str, shards: int) -> int:
    """The shard a person's records are placed in (all of them: one person, one shard)."""
    return keyed_int(secret, "shard", subject_id) % shards


def place(df: pd.DataFrame, columns: Columns, secret: bytes, *, shards: int, slices: int, holdout_fraction: float,
          placement: str = "subject") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows with shard/slice/keys, held-out rows with keys), both sorted by record key.

    The slice is the one a new layout gives (`Layout.first_slice`); `settle_slices` then keeps
    the slice of every record the previous partitions already held.
    """
    layout = Layout(shards=shards, slices=slices, placement=placement)
    subjects = df[columns.subject_id].astype(str)
    records = df[columns.record_id].astype(str)
    uniq = subjects.unique()
    holdout_of = {s: is_holdout(secret, s, holdout_fraction) for s in uniq}
    shard_for = {s: shard_of(secret, s, layout.shards) for s in uniq}
    placed = df.copy()
    placed[SUBJECT_KEY] = subjects.map({s: subject_key(secret, s) for s in uniq})
    placed[RECORD_KEY] = [record_key(secret, r) for r in records]
    placed[SHARD] = subjects.map(shard_for).astype("int64")
    if layout.placement == "subject":
        slice_of = {s: layout.first_slice(secret, s, None) for s in uniq}
        placed[SLICE] = subjects.map(slice_of).astype("int64")
    else:
        placed[SLICE] = pd.Series([layout.first_slice(secret, None, r) for r in records], index=df.index, dtype="int64")
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


def write_dataset(train: pd.DataFrame, holdout: pd.DataFrame, *, shards_dir: Path, holdout_path: Path,
                  layout: Layout) -> None:
    """Replace the partitioned dataset and the holdout file together (see `DatasetWriter`)."""
    with DatasetWriter(shards_dir=shards_dir, holdout_path=holdout_path) as out:
        for k in range(layout.shards):
            out.write_shard(k, train[train[SHARD] == k])
        out.write_layout(layout)
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

    def write_layout(self, layout: Layout) -> None:
        text = json.dumps(asdict(layout), sort_keys=True) + "\n"
        dest, old = self.staging / "shards" / LAYOUT_FILE, self.shards_dir / LAYOUT_FILE
        if old.exists() and old.read_text() == text:
            shutil.copy2(old, dest)  # untouched, like an unchanged partition
        else:
            dest.write_text(text)

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
