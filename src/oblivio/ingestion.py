"""The ingest step: stream the source, drop erased people, validate, place records in shards
and slices, write the partitions, pin the encoding and the DP noise.

Steps take a workspace root (a path: they run in worker processes too) and return small
JSON-able summaries (counts, hashes, paths; never rows), so nothing personal reaches
Prefect's result storage. The flows and the `oblivio stage` commands (dvc.yaml) call them.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from oblivio.data.columns import RECORD_KEY, SLICE, SUBJECT_KEY
from oblivio.data.encoding import Encoder, check_values
from oblivio.data.identifiers import IdentifierScan, candidate
from oblivio.data.record_ids import with_record_ids
from oblivio.data.sharding import DatasetWriter, Layout, Spill, place, read_layout, read_shard, settle_slices
from oblivio.data.sources import BATCH_ROWS, TableSource, open_source
from oblivio.data.validate import TableValidation, check_columns, numpy_numeric
from oblivio.dp_calibration import calibrate_dp
from oblivio.encoding_pin import pin_encoding
from oblivio.errors import DataError
from oblivio.keys import keyed_int, record_key, subject_key
from oblivio.workspace import WorkspaceDir


def sample_subjects(subjects: Iterable[str], n: int, secret: bytes) -> frozenset[str]:
    """The `n` distinct subjects with the smallest keyed hashes (ties: first seen first)."""
    distinct = list(dict.fromkeys(subjects))
    return frozenset(sorted(distinct, key=lambda s: keyed_int(secret, "sample", s))[:n])


def limit_subjects(df: pd.DataFrame, subject_col: str, n: int, secret: bytes) -> pd.DataFrame:
    """A deterministic sample of `n` subjects (smallest keyed hashes): quick tours and tests."""
    subjects = df[subject_col].astype(str)
    return df[subjects.isin(sample_subjects(subjects.unique(), n, secret))].reset_index(drop=True)


def drop_tombstoned(df: pd.DataFrame, ws: WorkspaceDir, *, subjects: frozenset[str], records: frozenset[str]
                    ) -> tuple[pd.DataFrame, int]:
    """Remove rows of erased subjects and erased records; they must never come back."""
    if not subjects and not records:
        return df, 0
    cols = ws.params.data.columns
    s_keys = df[cols.subject_id].astype(str).map(lambda s: subject_key(ws.secret, s))
    r_keys = df[cols.record_id].astype(str).map(lambda r: record_key(ws.secret, r))
    erased = s_keys.isin(subjects) | r_keys.isin(records)
    return df[~erased].reset_index(drop=True), int(erased.sum())


def tombstones(ws: WorkspaceDir) -> tuple[frozenset[str], frozenset[str]]:
    """(erased subject keys, erased record keys) from the ledger; empty before any request."""
    if not ws.ledger_path.exists():
        return frozenset(), frozenset()
    from oblivio.ledger import Ledger

    ledger = Ledger(ws.ledger_path)
    try:
        return ledger.tombstones(), ledger.record_tombstones()
    finally:
        ledger.close()


def ingest(root: Path, *, batch_rows: int = BATCH_ROWS, reslice: bool = False) -> dict:
    """Load, drop erased people, validate, place in shards/slices, write partitions.

    The previous partitions' layout is kept: each record keeps its slice, and records that
    arrive now go to their shard's newest slice (`settle_slices`), so a growth run retrains
    one stage per shard that received any. A new layout is made on the first ingest, when
    `sisa.shards` or `sisa.slices` changed, or with `reslice` (a rebalance, and a full retrain).

    The source streams through in batches of `batch_rows`: each is checked, filtered,
    validated and placed, and its rows parked by shard (`Spill`); then each partition is
    written from its own rows. Memory follows the batch and the largest shard (or the
    holdout), not the table. Nothing is written unless the whole table validates.
    """
    ws = WorkspaceDir(root)
    params = ws.params
    cols = params.data.columns
    source = open_source(params.data.source, ws.root, batch_rows=batch_rows)
    check_columns(source.columns, params.data)
    encoder = pin_encoding(ws, source)
    keep = [cols.record_id, cols.subject_id, cols.label, *cols.features]
    validation = TableValidation(params.data, encoder)
    scan = identifier_scan(encoder, cols.subject_id)
    dropped = 0
    previous = None if reslice else read_layout(ws.shards_dir)
    wanted = Layout(shards=params.sisa.shards, slices=params.sisa.slices, placement=params.sisa.placement)
    kept = previous is not None and (previous.shards, previous.slices) == (wanted.shards, wanted.slices)
    layout = previous if kept else wanted
    with Spill(ws.state_dir) as spill:
        for batch, n in _batches(ws, source):
            dropped += n
            check_values(batch, encoder)
            validation.add(batch)
            scan.add(batch)
            if len(batch):
                spill.add(*place(batch[keep], cols, ws.secret, shards=layout.shards, slices=layout.slices,
                                 holdout_fraction=params.data.holdout_fraction, placement=layout.placement))
        summary = validation.finish()
        if not spill.train_rows or not spill.holdout_rows:
            raise DataError(f"After the holdout split, {'training' if not spill.train_rows else 'held-out'} data is "
                            f"empty ({spill.train_rows + spill.holdout_rows} rows). "
                            "Add data or change data.holdout_fraction.")
        with DatasetWriter(shards_dir=ws.shards_dir, holdout_path=ws.holdout_path) as out:
            shards = [_write_shard(out, k, spill.shard(k), layout.slices,
                                   read_shard(ws.shards_dir, k, columns=[RECORD_KEY, SLICE]) if kept else None)
                      for k in range(layout.shards)]
            out.write_layout(layout)
            holdout_subjects = _write_holdout(out, spill.holdout())
            out.commit()
    unit_stages = "subject_stages" if params.dp.unit == "subject" else "stages"
    calibration = calibrate_dp(ws, [s[unit_stages] for s in shards if s["rows"]])
    return {
        "dp_noise_multiplier": calibration["noise_multiplier"] if calibration else None,
        "n_records": spill.train_rows,
        "n_subjects": sum(s["subjects"] for s in shards),
        "n_holdout_records": spill.holdout_rows,
        "n_holdout_subjects": holdout_subjects,
        "n_dropped_tombstoned": dropped,
        "max_records_per_subject": max(s["max_per_subject"] for s in shards),
        "shard_sizes": [s["rows"] for s in shards],
        "placement": {"layout": "kept" if kept else ("resliced" if reslice and previous else "new"),
                      "rule": layout.placement, "records_arrived": sum(s["arrived"] for s in shards),
                      "shards_grown": [k for k, s in enumerate(shards) if s["arrived"]],
                      # how lopsided growth made the slices: the newest one's share of its shard, at worst
                      "newest_slice_share": max(s["newest_share"] for s in shards)},
        "validation": summary,
        "input_width": encoder.width,
        "warnings": scan.warnings(),
    }


def identifier_scan(encoder: Encoder, subject_id: str) -> IdentifierScan:
    return IdentifierScan([c.name for c in encoder.columns if candidate(c.kind, c.source_type == "long")], subject_id)


def _batches(ws: WorkspaceDir, source: TableSource) -> Iterator[tuple[pd.DataFrame, int]]:
    """(batch, rows of erased people it lost): the declared columns, sampled (`limit_subjects`), erased rows out."""
    data = ws.params.data
    cols = data.columns
    chosen = (sample_subjects(_subject_ids(source, cols.subject_id), data.limit_subjects, ws.secret)
              if data.limit_subjects else None)
    erased_subjects, erased_records = tombstones(ws)
    read = [*([] if cols.derive_record_id else [cols.record_id]), cols.subject_id, cols.label, *cols.features]
    for batch in source.batches(list(dict.fromkeys(read))):
        batch = with_record_ids(numpy_numeric(batch, cols.features), cols)
        if chosen is not None:
            batch = batch[batch[cols.subject_id].astype(str).isin(chosen)].reset_index(drop=True)
        yield drop_tombstoned(batch, ws, subjects=erased_subjects, records=erased_records)


def _subject_ids(source: TableSource, column: str) -> Iterator[str]:
    """Every subject id as text, in source order: one pass over that column alone."""
    for batch in source.batches([column]):
        yield from batch[column].astype(str).unique()


def _write_shard(out: DatasetWriter, k: int, rows: pd.DataFrame, n_slices: int, placed: pd.DataFrame | None) -> dict:
    """Write shard k, keeping the slices of the records `placed` (the previous partition) held;
    what the summary and the DP calibration need of it.

    A person's rows all sit in one shard, so people can be counted shard by shard.
    """
    from oblivio.training.dp import stage_sizes, subject_stage_sizes

    rows, arrived = settle_slices(rows, placed, n_slices)
    out.write_shard(k, rows)
    per_subject = rows.groupby(SUBJECT_KEY).size()
    return {"rows": len(rows), "subjects": len(per_subject), "stages": stage_sizes(rows[SLICE].to_numpy(), n_slices),
            "subject_stages": subject_stage_sizes(rows[SLICE].to_numpy(), rows[SUBJECT_KEY].to_numpy(), n_slices),
            "max_per_subject": int(per_subject.max()) if len(per_subject) else 0, "arrived": arrived,
            "newest_share": float((rows[SLICE] == n_slices - 1).mean()) if len(rows) else 0.0}


def _write_holdout(out: DatasetWriter, rows: pd.DataFrame) -> int:
    """Write the held-out rows; how many people they hold."""
    out.write_holdout(rows)
    return int(rows[SUBJECT_KEY].nunique())
