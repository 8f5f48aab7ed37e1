"""Identifier-like feature columns are named in a warning; ordinary features are not."""
from __future__ import annotations

import numpy as np
import pandas as pd

from oblivio.data.identifiers import IdentifierScan


def table(n_people: int = 200, rows_each: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    person = np.repeat([f"C-{i}" for i in range(n_people)], rows_each)
    n = len(person)
    return pd.DataFrame({
        "person": person,
        "email": pd.Series(person).str.lower() + "@example.com",  # one value per person
        "order_no": np.arange(n) + 10_000,  # unique per row
        "region": rng.choice(["north", "south", "east"], n),
        "visits": rng.integers(0, 30, n),
    })


def scan(frame: pd.DataFrame, columns: list[str], batch: int = 70) -> list[str]:
    s = IdentifierScan(columns, "person")
    for start in range(0, len(frame), batch):
        s.add(frame.iloc[start:start + batch])
    return s.warnings()


def test_identifiers_per_row_and_per_person_are_named_and_features_are_not():
    warnings = scan(table(), ["email", "order_no", "region", "visits", "person"])
    named = sorted(w.split("'")[1] for w in warnings)
    assert named == ["email", "order_no", "person"]
    assert all("kind: excluded" in w for w in warnings)
    assert not any("@example.com" in w or "C-1" in w for w in warnings)  # counts, never values


def test_a_few_rows_are_too_few_to_judge():
    assert scan(table(n_people=10, rows_each=1), ["email"]) == []
