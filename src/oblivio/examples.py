"""A few ids that exist in the current data, for a tour or a drill (`requests --example-ids`).

A tour that names an id the data does not hold ends in a refusal. These are read from the
configured source and kept only if the placed data holds them and no erasure took them.
They are raw ids, printed to the terminal only: never logged or recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from oblivio.data.columns import RECORD_KEY, SUBJECT_KEY
from oblivio.errors import OblivioError
from oblivio.keys import record_key, subject_key
from oblivio.ledger import Ledger
from oblivio.results import Result
from oblivio.workspace import WorkspaceDir


@dataclass(frozen=True)
class ExampleIds(Result):
    subjects: list[str] = field(default_factory=list)  # people with records in the current data
    records: list[str] = field(default_factory=list)  # single records of other people


def example_ids(ws: WorkspaceDir, *, n: int = 3) -> ExampleIds:
    """The n smallest placed subject ids, and one record each of the n next people."""
    if not ws.shards_dir.exists():
        raise OblivioError("No data is placed yet: run `oblivio run` first, then ask for example ids.")
    import pyarrow.parquet as pq

    from oblivio.data.sources import load_source

    files = sorted(ws.shards_dir.glob("shard=*/part.parquet"))
    placed_subjects, placed_records = set(), set()
    for path in files:
        table = pq.read_table(path, columns=[SUBJECT_KEY, RECORD_KEY])
        placed_subjects.update(table.column(SUBJECT_KEY).to_pylist())
        placed_records.update(table.column(RECORD_KEY).to_pylist())
    ledger = Ledger(ws.ledger_path)
    try:
        erased = ledger.tombstones()
    finally:
        ledger.close()
    cols = ws.params.data.columns
    table = load_source(ws.params.data.source, ws.root)[[cols.subject_id, cols.record_id]]
    table = table.sort_values([cols.subject_id, cols.record_id])
    subjects: list[str] = []
    records: list[str] = []
    for subject, rows in table.groupby(cols.subject_id, sort=True):
        key = subject_key(ws.secret, str(subject))
        if key not in placed_subjects or key in erased:
            continue
        if len(subjects) < n:
            subjects.append(str(subject))
        elif len(records) < n:
            record = next((str(r) for r in rows[cols.record_id] if record_key(ws.secret, str(r)) in placed_records),
                          None)
            if record is not None:
                records.append(record)
        if len(records) >= n:
            break
    return ExampleIds(subjects=subjects, records=records)
