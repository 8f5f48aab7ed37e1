"""Record ids for a table that has none: derived from the person and the row's own content.

`init --from-table` without `--record-id` sets `data.columns.derive_record_id`: each row's
id is then "row-" + blake2b-128 of its subject id, label and feature values (as text, in
declaration order), computed as the row is read. The id is stable (same row, same id, in
any order or batch) and needs nothing outside the row. What it implies: two identical
rows of one person get the same id and fail validation (record ids must be unique), and
changing the declared features changes every id. `forget --subject` is unaffected.
"""
from __future__ import annotations

import hashlib

import pandas as pd

from oblivio.config import Columns


def content_columns(cols: Columns) -> list[str]:
    return [cols.subject_id, cols.label, *cols.features]


def derive_record_ids(frame: pd.DataFrame, cols: Columns) -> pd.Series:
    texts = [frame[c].astype(object).where(frame[c].notna(), "\x00").astype(str) for c in content_columns(cols)]
    joined = texts[0].str.cat(texts[1:], sep="\x1f") if len(texts) > 1 else texts[0]
    return joined.map(lambda t: "row-" + hashlib.blake2b(t.encode(), digest_size=16).hexdigest())


def with_record_ids(frame: pd.DataFrame, cols: Columns) -> pd.DataFrame:
    """`frame` with its derived record-id column, when params.yaml asks for one."""
    if not cols.derive_record_id:
        return frame
    return frame.assign(**{cols.record_id: derive_record_ids(frame, cols)})
