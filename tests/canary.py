"""A planted person with unique marker values, and the scan that must not find them after erasure.

Shared by the embedded-stack test (tests/integration/test_erasure.py: the person; its
workspace scan is helpers.marker_hits) and the production one (tests/production/test_purge_production.py):
the same person, the same scan, other stores (objects of every bucket, database dumps).
"""
from __future__ import annotations

import io

import pandas as pd
import pyarrow.parquet as pq

from helpers import TEST_SECRET, synthetic_table

MARKER = "zq-MARKER-7f3a9c"
MARKER_VALUE = 12345.678901


def training_side_subject() -> str:
    """A marker subject id the test secret places on the training side (not held out)."""
    from oblivio.data.sharding import is_holdout

    secret = bytes.fromhex(TEST_SECRET)
    return next(f"{MARKER}-subject{i}" for i in range(100) if not is_holdout(secret, f"{MARKER}-subject{i}", 0.2))


SUBJECT = training_side_subject()


def marked_table() -> pd.DataFrame:
    """The synthetic table plus one person whose ids and one value are unique markers."""
    table = synthetic_table()
    table["person"] = "p" + table["person"].astype(str)
    planted = pd.DataFrame([{"rid": f"{MARKER}-r{j}", "person": SUBJECT, "y": j % 2,
                             "a": MARKER_VALUE if j == 0 else 0.5, "b": 0.1, "c": -0.2} for j in range(3)])
    return pd.concat([table, planted], ignore_index=True)


def object_hits(name: str, data: bytes, marker: str = MARKER, value: float = MARKER_VALUE) -> list[str]:
    """Where `data` (a file or an object, named `name`) holds the marker or the value: as bytes
    (text), or in a Parquet table (compressed pages hide bytes)."""
    hits = [name] if marker.encode() in data or str(value).encode() in data else []
    if data[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(data)).to_pandas()
        as_text = table.astype(str)
        if as_text.apply(lambda col: col.str.contains(marker)).any().any() or (table == value).any().any():
            hits.append(f"{name} (table)")
    return hits
