"""Shard/slice/holdout placement and the shard-partitioned dataset on disk."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from oblivio.config import Columns
from oblivio.data import sharding
from oblivio.data.columns import RECORD_KEY, SHARD, SLICE, SUBJECT_KEY
from oblivio.data.sharding import (
    LAYOUT_FILE, Layout, Spill, place, read_holdout, read_layout, read_shard, rewrite_partition, settle_slices,
    write_dataset,
)

SECRET = bytes.fromhex("5e" * 32)
COLUMNS = Columns(record_id="record_id", subject_id="subject_id", label="label", features=("f1", "f2"))
S, R, HOLDOUT = 5, 4, 0.25
N_SUBJECTS = 300


def make_frame(n_subjects: int = N_SUBJECTS, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=n_subjects)  # 1..5 rows per subject
    subjects = np.repeat([f"subj-{i:04d}" for i in range(n_subjects)], counts)
    n = len(subjects)
    return pd.DataFrame({
        "record_id": [f"rec-{i:05d}" for i in range(n)],
        "subject_id": subjects,
        "label": rng.integers(0, 2, size=n).astype("int64"),
        "f1": rng.normal(size=n),
        "f2": rng.normal(size=n),
    })


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def placed(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return place(frame, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT)


def test_every_row_appears_exactly_once_across_train_and_holdout(frame, placed) -> None:
    train, holdout = placed
    assert len(train) + len(holdout) == len(frame)
    ids = pd.concat([train["record_id"], holdout["record_id"]])
    assert ids.is_unique
    assert set(ids) == set(frame["record_id"])
    # original columns and values survive placement
    merged = pd.concat([train, holdout]).set_index("record_id").loc[frame["record_id"]]
    assert (merged["subject_id"].to_numpy() == frame["subject_id"].to_numpy()).all()
    assert np.array_equal(merged["f1"].to_numpy(), frame["f1"].to_numpy())


def test_all_rows_of_a_subject_are_in_one_shard(placed) -> None:
    train, _ = placed
    shards_per_subject = train.groupby("subject_id")[SHARD].nunique()
    assert (shards_per_subject == 1).all()
    # and with 1-5 rows per subject, many subjects do have several rows
    assert (train.groupby("subject_id").size() > 1).sum() > 50


def test_every_shard_is_used_and_in_range(placed) -> None:
    train, _ = placed
    assert train[SHARD].between(0, S - 1).all()
    assert set(train[SHARD]) == set(range(S))
    assert train[SHARD].dtype == np.int64


def test_no_subject_is_on_both_sides(placed) -> None:
    train, holdout = placed
    assert set(train["subject_id"]).isdisjoint(set(holdout["subject_id"]))
    assert set(train[SUBJECT_KEY]).isdisjoint(set(holdout[SUBJECT_KEY]))


def test_every_training_record_has_exactly_one_slice_in_range(placed) -> None:
    train, _ = placed
    assert train[SLICE].notna().all()
    assert train[SLICE].dtype == np.int64
    assert train[SLICE].between(0, R - 1).all()
    assert set(train[SLICE]) == set(range(R))  # no slice left empty at this size
    assert train["record_id"].is_unique  # one row, hence one slice, per record


def test_holdout_has_keys_but_no_shard_or_slice(placed) -> None:
    _, holdout = placed
    assert SHARD not in holdout.columns and SLICE not in holdout.columns
    assert holdout[RECORD_KEY].str.fullmatch(r"[0-9a-f]{64}").all()
    assert holdout[SUBJECT_KEY].str.fullmatch(r"[0-9a-f]{64}").all()


def test_keys_never_hold_raw_ids(placed) -> None:
    train, _ = placed
    assert train[RECORD_KEY].str.fullmatch(r"[0-9a-f]{64}").all()
    assert not train[RECORD_KEY].isin(train["record_id"]).any()
    assert not train[SUBJECT_KEY].isin(train["subject_id"]).any()
    assert train[RECORD_KEY].is_unique
    # one subject key per subject, different subjects different keys
    assert (train.groupby("subject_id")[SUBJECT_KEY].nunique() == 1).all()
    assert train.groupby(SUBJECT_KEY)["subject_id"].nunique().max() == 1


def test_holdout_share_of_subjects_is_near_holdout_fraction(frame, placed) -> None:
    _, holdout = placed
    share = holdout["subject_id"].nunique() / frame["subject_id"].nunique()
    # binomial(300, 0.25): sd ~ 0.025, allow about 3 sd
    assert abs(share - HOLDOUT) < 0.08, share


@pytest.mark.parametrize(("fraction", "lo", "hi"), [(0.0, 0.0, 0.0), (0.5, 0.4, 0.6), (0.9, 0.83, 0.97)])
def test_holdout_share_tracks_the_fraction(frame, fraction, lo, hi) -> None:
    _, holdout = place(frame, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=fraction)
    share = holdout["subject_id"].nunique() / N_SUBJECTS
    assert lo <= share <= hi, share


def test_outputs_are_sorted_by_record_key(placed) -> None:
    train, holdout = placed
    assert train[RECORD_KEY].is_monotonic_increasing
    assert holdout[RECORD_KEY].is_monotonic_increasing
    assert isinstance(train.index, pd.RangeIndex) and train.index[0] == 0


def test_placement_does_not_depend_on_row_order(frame, placed) -> None:
    train, holdout = placed
    shuffled = frame.sample(frac=1.0, random_state=7)
    assert not shuffled["record_id"].equals(frame["record_id"])  # really shuffled
    train2, holdout2 = place(shuffled, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT)
    pd.testing.assert_frame_equal(train2, train)
    pd.testing.assert_frame_equal(holdout2, holdout)


def test_placement_depends_on_the_secret(frame, placed) -> None:
    train, _ = placed
    other, _ = place(frame, COLUMNS, bytes(32), shards=S, slices=R, holdout_fraction=HOLDOUT)
    assert set(other[RECORD_KEY]).isdisjoint(set(train[RECORD_KEY]))
    common = train.merge(other, on="record_id", suffixes=("", "_o"))
    assert (common[SHARD] != common[SHARD + "_o"]).any()


def test_removing_one_subject_moves_nobody_else(frame, placed) -> None:
    train, holdout = placed
    victim = train["subject_id"].iloc[0]
    train2, holdout2 = place(frame[frame["subject_id"] != victim], COLUMNS, SECRET,
                             shards=S, slices=R, holdout_fraction=HOLDOUT)
    pd.testing.assert_frame_equal(train2, train[train["subject_id"] != victim].reset_index(drop=True))
    pd.testing.assert_frame_equal(holdout2, holdout)


def test_integer_ids_are_placed_like_their_text(frame) -> None:
    numeric = frame.assign(
        record_id=np.arange(len(frame), dtype="int64"),
        subject_id=frame["subject_id"].str.slice(5).astype("int64"),
    )
    as_text = numeric.assign(record_id=numeric["record_id"].astype(str), subject_id=numeric["subject_id"].astype(str))
    t1, h1 = place(numeric, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT)
    t2, h2 = place(as_text, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT)
    assert t1[[RECORD_KEY, SUBJECT_KEY, SHARD, SLICE]].equals(t2[[RECORD_KEY, SUBJECT_KEY, SHARD, SLICE]])
    assert h1[RECORD_KEY].equals(h2[RECORD_KEY])


# --- on disk ------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (sha256(p), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def write(root: Path, train: pd.DataFrame, holdout: pd.DataFrame) -> None:
    write_dataset(train, holdout, shards_dir=root / "data" / "shards",
                  holdout_path=root / "data" / "holdout.parquet", layout=Layout(shards=S, slices=R, placement="subject"))


def test_write_dataset_writes_every_partition_and_holdout(tmp_path: Path, placed) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    data = tmp_path / "data"
    files = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    assert files == (["holdout.parquet", f"shards/{LAYOUT_FILE}"]
                     + [f"shards/shard={k}/part.parquet" for k in range(S)])
    assert read_layout(data / "shards") == Layout(shards=S, slices=R, placement="subject")
    # no staging or trash directories are left behind
    assert sorted(p.name for p in data.iterdir()) == ["holdout.parquet", "shards"]
    total = 0
    for k in range(S):
        part = read_shard(data / "shards", k)
        assert len(part) > 0
        assert (part[SHARD] == k).all()
        # within a partition, rows are ordered by slice then record key
        assert list(zip(part[SLICE], part[RECORD_KEY])) == sorted(zip(part[SLICE], part[RECORD_KEY]))
        expected = train[train[SHARD] == k].set_index(RECORD_KEY).sort_index()
        got = part.set_index(RECORD_KEY).sort_index()
        pd.testing.assert_frame_equal(got, expected)
        total += len(part)
    assert total == len(train)
    pd.testing.assert_frame_equal(read_holdout(data / "holdout.parquet"), holdout)


def test_empty_shard_still_gets_a_partition_file(tmp_path: Path, placed) -> None:
    train, holdout = placed
    write(tmp_path, train[train[SHARD] != 2], holdout)
    part = read_shard(tmp_path / "data" / "shards", 2)
    assert len(part) == 0
    assert list(part.columns) == list(train.columns)


def test_rewrite_without_one_training_subject_changes_exactly_one_partition(tmp_path: Path, frame, placed) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    data = tmp_path / "data"
    victim_row = train.iloc[len(train) // 2]
    victim, victim_shard = victim_row["subject_id"], int(victim_row[SHARD])
    for k in range(S):  # old, distinctive mtimes: any rewrite (even of equal bytes) shows
        p = data / "shards" / f"shard={k}" / "part.parquet"
        os.utime(p, ns=(10**18 + k, 10**18 + k))
    before = snapshot(data)

    train2, holdout2 = place(frame[frame["subject_id"] != victim], COLUMNS, SECRET,
                             shards=S, slices=R, holdout_fraction=HOLDOUT)
    write(tmp_path, train2, holdout2)
    after = snapshot(data)

    assert before.keys() == after.keys()
    changed = {name for name in before if before[name][0] != after[name][0]}
    assert changed == {f"shards/shard={victim_shard}/part.parquet"}
    for k in range(S):
        name = f"shards/shard={k}/part.parquet"
        if k != victim_shard:
            assert after[name] == before[name], f"{name}: bytes or mtime changed"
    assert victim not in set(read_shard(data / "shards", victim_shard)["subject_id"])
    assert after["holdout.parquet"][0] == before["holdout.parquet"][0]


def test_rewrite_without_one_holdout_subject_changes_only_holdout(tmp_path: Path, frame, placed) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    data = tmp_path / "data"
    before = snapshot(data)
    victim = holdout["subject_id"].iloc[0]
    train2, holdout2 = place(frame[frame["subject_id"] != victim], COLUMNS, SECRET,
                             shards=S, slices=R, holdout_fraction=HOLDOUT)
    write(tmp_path, train2, holdout2)
    after = snapshot(data)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"holdout.parquet"}
    assert victim not in set(read_holdout(data / "holdout.parquet")["subject_id"])


def test_rewriting_identical_data_touches_no_partition(tmp_path: Path, placed) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    data = tmp_path / "data"
    before = snapshot(data)
    write(tmp_path, train, holdout)
    after = snapshot(data)
    for k in range(S):
        name = f"shards/shard={k}/part.parquet"
        assert after[name] == before[name]


def test_rewrite_partition_replaces_rows_atomically(tmp_path: Path, placed) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    part_dir = tmp_path / "data" / "shards" / "shard=1"
    path = part_dir / "part.parquet"
    old = read_shard(tmp_path / "data" / "shards", 1)
    keep = old.iloc[1:].reset_index(drop=True)
    inode_before = path.stat().st_ino
    rewrite_partition(path, keep)
    pd.testing.assert_frame_equal(pq.read_table(path).to_pandas(), keep)
    assert sorted(p.name for p in part_dir.iterdir()) == ["part.parquet"]  # no tmp left
    assert path.stat().st_ino != inode_before  # replaced by rename, not rewritten in place


def test_rewrite_partition_failure_leaves_the_old_file_whole(tmp_path: Path, placed, monkeypatch) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    path = tmp_path / "data" / "shards" / "shard=0" / "part.parquet"
    old_bytes = path.read_bytes()

    def crash(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(sharding.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        rewrite_partition(path, read_shard(path.parent.parent, 0).iloc[:1])
    assert path.read_bytes() == old_bytes


def test_rewrite_partition_failure_leaves_no_tmp_file(tmp_path: Path, placed, monkeypatch) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    path = tmp_path / "data" / "shards" / "shard=0" / "part.parquet"

    def crash(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(sharding.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        rewrite_partition(path, read_shard(path.parent.parent, 0).iloc[:1])
    assert sorted(p.name for p in path.parent.iterdir()) == ["part.parquet"]


def test_write_dataset_failure_leaves_the_old_dataset_whole(tmp_path: Path, frame, placed, monkeypatch) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    data = tmp_path / "data"
    before = snapshot(data)
    victim = train["subject_id"].iloc[0]
    train2, holdout2 = place(frame[frame["subject_id"] != victim], COLUMNS, SECRET,
                             shards=S, slices=R, holdout_fraction=HOLDOUT)
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "holdout.parquet":
            raise OSError("disk full")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(sharding.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path, train2, holdout2)
    monkeypatch.undo()
    assert {k: v[0] for k, v in snapshot(data).items()} == {k: v[0] for k, v in before.items()}


# --- streamed in batches ----------------------------------------------------------------

def test_a_spill_of_batches_gives_back_each_shard_and_the_holdout(tmp_path: Path, frame, placed) -> None:
    train, holdout = placed
    with Spill(tmp_path) as spill:
        for i in range(0, len(frame), 97):
            spill.add(*place(frame.iloc[i:i + 97], COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT))
        assert (spill.train_rows, spill.holdout_rows) == (len(train), len(holdout))
        for k in range(S):
            got = spill.shard(k).sort_values(RECORD_KEY).reset_index(drop=True)
            pd.testing.assert_frame_equal(got, train[train[SHARD] == k].reset_index(drop=True))
        pd.testing.assert_frame_equal(spill.holdout(), holdout)
        spilled = spill.dir
    assert not spilled.exists()  # personal data: gone on exit
    assert list(tmp_path.iterdir()) == []


def test_a_partition_joined_from_batches_has_the_bytes_of_one_frame(tmp_path: Path) -> None:
    """Joined columns are several Arrow chunks; the file must not show where batches met."""
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({RECORD_KEY: [f"{v:064x}" for v in rng.integers(0, 2**62, 20_000)],
                         "f1": rng.normal(size=20_000)})
    joined = pd.concat([rows.iloc[i:i + 1000] for i in range(0, len(rows), 1000)], ignore_index=True)
    sharding._write_table(rows, tmp_path / "one.parquet")
    sharding._write_table(joined, tmp_path / "joined.parquet")
    assert sha256(tmp_path / "one.parquet") == sha256(tmp_path / "joined.parquet")


def test_subject_placement_puts_a_persons_records_in_one_slice_and_record_placement_spreads_them(frame) -> None:
    by_subject, _ = place(frame, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT)
    assert by_subject.groupby(SUBJECT_KEY)[SLICE].nunique().max() == 1
    assert set(by_subject[SLICE]) == set(range(R))
    by_record, _ = place(frame, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT, placement="record")
    assert by_record.groupby(SUBJECT_KEY)[SLICE].nunique().max() > 1
    assert by_record[SHARD].tolist() == by_subject[SHARD].tolist()  # the shard is the person's either way


def test_records_that_arrive_later_go_to_the_newest_slice_and_the_others_keep_theirs(frame) -> None:
    first = frame[frame["subject_id"] < "subj-0200"]
    before, _ = place(first, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT)
    grown, _ = place(frame, COLUMNS, SECRET, shards=S, slices=R, holdout_fraction=HOLDOUT)
    for k in range(S):
        old = before[before[SHARD] == k][[RECORD_KEY, SLICE]]
        rows, arrived = settle_slices(grown[grown[SHARD] == k], old, R)
        new = ~rows[RECORD_KEY].isin(old[RECORD_KEY])
        assert arrived == int(new.sum()) > 0
        assert (rows.loc[new, SLICE] == R - 1).all()
        kept = rows.loc[~new].set_index(RECORD_KEY)[SLICE]
        assert kept.to_dict() == old.set_index(RECORD_KEY)[SLICE].to_dict()
    unchanged, arrived = settle_slices(grown, None, R)  # a new layout: the slices `place` gave
    assert arrived == 0 and unchanged[SLICE].tolist() == grown[SLICE].tolist()


def test_partitions_without_a_layout_file_were_placed_record_by_record(tmp_path: Path, placed) -> None:
    train, holdout = placed
    write(tmp_path, train, holdout)
    shards_dir = tmp_path / "data" / "shards"
    (shards_dir / LAYOUT_FILE).unlink()
    assert read_layout(shards_dir) == Layout(shards=S, slices=R, placement="record")
    assert read_layout(tmp_path / "nothing-here") is None
