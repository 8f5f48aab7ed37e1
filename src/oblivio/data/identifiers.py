"""Warn about feature columns that look like identifiers (an email, a customer number, the subject id).

An identifier as a feature lets a model memorise people: it defeats the membership audit
and says nothing about the task. A column is identifier-like when its values are nearly
unique per row, or when each value belongs to one person and nearly every person has
their own. Measured on up to `SAMPLE_ROWS` rows (as 64-bit hashes, never the values), on
categorical and integer columns only (a continuous measurement is unique per row too).
The result is a warning naming the column, at `init --from-table` and at every ingest.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

SAMPLE_ROWS = 200_000
NEAR_UNIQUE = 0.9
MIN_ROWS, MIN_SUBJECTS = 50, 20


def candidate(kind: str, integer: bool) -> bool:
    """Whether a feature of this kind (integer-typed or not) is scanned."""
    return kind == "categorical" or (kind == "numeric" and integer)


class IdentifierScan:
    """Hashes of `columns` and of the subject id over the first SAMPLE_ROWS rows; `warnings()` judges them."""

    def __init__(self, columns: list[str], subject_id: str):
        self.columns, self.subject_id = columns, subject_id
        self._values: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        self._subjects: list[np.ndarray] = []
        self._rows = 0

    def add(self, batch: pd.DataFrame) -> None:
        take = batch.iloc[:max(0, SAMPLE_ROWS - self._rows)]
        if not len(take) or not self.columns:
            return
        self._rows += len(take)
        self._subjects.append(pd.util.hash_pandas_object(take[self.subject_id].astype(str), index=False).to_numpy())
        for c in self.columns:
            values = take[c]
            present = values.notna().to_numpy()
            hashed = pd.util.hash_pandas_object(values.astype(str), index=False).to_numpy()
            self._values[c].append(np.where(present, hashed, 0))  # 0: missing, not counted

    def warnings(self) -> list[str]:
        if self._rows < MIN_ROWS:
            return []
        subjects = np.concatenate(self._subjects)
        n_subjects = len(np.unique(subjects))
        out = []
        for c in self.columns:
            values = np.concatenate(self._values[c])
            present = values != 0
            distinct = len(np.unique(values[present]))
            pairs = len(np.unique(np.stack([values[present], subjects[present]], axis=1), axis=0))
            if present.sum() >= MIN_ROWS and distinct >= NEAR_UNIQUE * present.sum():
                out.append(f"feature column {c!r} looks like an identifier: {distinct} distinct values in "
                           f"{int(present.sum())} rows. Declare it `kind: excluded` unless it really is a feature.")
            elif n_subjects >= MIN_SUBJECTS and pairs == distinct and distinct >= NEAR_UNIQUE * n_subjects:
                out.append(f"feature column {c!r} looks like an identifier: each of its {distinct} values belongs to "
                           f"one person ({n_subjects} people). Declare it `kind: excluded` unless it really is "
                           "a feature.")
        return out
