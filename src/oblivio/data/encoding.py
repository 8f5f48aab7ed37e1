"""Raw columns -> the model's input matrix: declared once, used by training, audits and serving.

Like a scikit-learn ColumnTransformer, but with no `fit`: every transform is a function of
one record's own values and of params.yaml, never of the table. Erasing one person can
therefore never change another person's inputs or the input width, and the registered
model encodes a raw row exactly as training did. The `Encoder` is part of the SISA
`Recipe`, so it is in every checkpoint key and in the models manifest.

Per kind (a column's block of the input, in declaration order):

- numeric: signed log1p of the value, plus a missing indicator (NaN -> 0, indicator 1).
  `train.model: cnn` (pixels): the value as given, NaN -> 0, no indicator.
- categorical, hashed (default): one-hot over `buckets` (default 64) buckets, bucket =
  blake2b-64("<column>\\0<token>") mod buckets, plus a missing indicator. Data-independent,
  so an unseen category needs no refit; two values may share a bucket.
- categorical with a declared `vocabulary`: one-hot over the vocabulary plus an "other"
  bucket, plus a missing indicator.
- datetime: the declared `parts` (default year, month, day, weekday) of the UTC time, each
  as a numeric value (signed log1p; the year as years since 2000), plus one missing
  indicator (a missing time: parts 0).

A value's token is its text: integral numbers without a decimal point (so a code read as
3, 3.0 or "3" is the same category), booleans as 1/0 (as a nullable boolean read as a
number would be), other numbers by `repr`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from oblivio.config import FeatureSpec
from oblivio.errors import DataError

DEFAULT_BUCKETS = 64
DEFAULT_DATETIME_PARTS = ("year", "month", "day", "weekday")
YEAR_EPOCH = 2000  # a datetime's year part is years since 2000: a fixed constant, not the data's
SOURCE_TYPES = ("double", "long", "boolean", "string", "datetime")  # MLflow column types of the raw data


@dataclass(frozen=True)
class ColumnEncoding:
    """One feature column's encoding, resolved: its kind and the raw type it is read as."""

    name: str
    kind: str  # numeric | categorical | datetime
    source_type: str  # one of SOURCE_TYPES: the MLflow signature's type for the raw column
    buckets: int = 0  # categorical without a vocabulary
    vocabulary: tuple[str, ...] | None = None  # tokens; "other" follows them
    parts: tuple[str, ...] = ()  # datetime

    def __post_init__(self):
        if isinstance(self.vocabulary, list):
            object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        if isinstance(self.parts, list):
            object.__setattr__(self, "parts", tuple(self.parts))

    def width(self, pixels: bool) -> int:
        if self.kind == "numeric":
            return 1 if pixels else 2
        if self.kind == "categorical":
            return (len(self.vocabulary) + 1 if self.vocabulary is not None else self.buckets) + 1
        return len(self.parts) + 1

    def output_names(self, pixels: bool) -> list[str]:
        if self.kind == "numeric":
            return [self.name] if pixels else [self.name, f"{self.name}:missing"]
        if self.kind == "categorical":
            slots = ([f"{self.name}={v}" for v in self.vocabulary] + [f"{self.name}:other"]
                     if self.vocabulary is not None else [f"{self.name}#{b}" for b in range(self.buckets)])
            return [*slots, f"{self.name}:missing"]
        return [*(f"{self.name}.{p}" for p in self.parts), f"{self.name}:missing"]


@dataclass(frozen=True)
class Encoder:
    """The input matrix of a frame of raw rows; see the module docstring for each kind."""

    columns: tuple[ColumnEncoding, ...]
    pixels: bool = False  # train.model cnn: numeric values as given, no indicators

    def __post_init__(self):
        cols = tuple(c if isinstance(c, ColumnEncoding) else ColumnEncoding(**c) for c in self.columns)
        object.__setattr__(self, "columns", cols)

    @classmethod
    def from_json(cls, raw: dict) -> "Encoder":
        return cls(columns=tuple(ColumnEncoding(**c) for c in raw["columns"]), pixels=raw.get("pixels", False))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def width(self) -> int:
        return sum(c.width(self.pixels) for c in self.columns)

    def output_names(self) -> list[str]:
        return [n for c in self.columns for n in c.output_names(self.pixels)]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, width) float32 inputs of the rows; one clear error naming a column that cannot be read."""
        missing = [c for c in self.names if c not in frame.columns]
        if missing:
            raise DataError(f"the rows lack feature column(s) {', '.join(missing)}; the model reads "
                            f"{', '.join(self.names)}")
        blocks = [_encode(frame[c.name], c, self.pixels) for c in self.columns]
        out = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))
        return out.astype(np.float32)


def _encode(series: pd.Series, col: ColumnEncoding, pixels: bool) -> np.ndarray:
    if col.kind == "numeric":
        return _numeric(_as_float(series, col.name), pixels)
    if col.kind == "categorical":
        return _categorical(series, col)
    return _datetime(series, col)


def _as_float(series: pd.Series, name: str) -> np.ndarray:
    try:
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise DataError(f"feature column {name!r} is numeric but holds values that are not numbers "
                        f"(type {series.dtype}); declare it `kind: categorical` in params.yaml "
                        "or fix the data") from None


def _numeric(x: np.ndarray, pixels: bool) -> np.ndarray:
    missing = np.isnan(x)
    filled = np.where(missing, 0.0, x)
    if pixels:
        return filled[:, None]
    return np.stack([np.sign(filled) * np.log1p(np.abs(filled)), missing.astype(np.float64)], axis=1)


def token(value) -> str | None:
    """A categorical value's text (None when missing): see the module docstring."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, (bytes, bytearray, list, dict, tuple, np.ndarray)):
        raise TypeError(type(value).__name__)
    return str(value)


def bucket_of(column: str, tok: str, buckets: int) -> int:
    digest = hashlib.blake2b(f"{column}\0{tok}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def _categorical(series: pd.Series, col: ColumnEncoding) -> np.ndarray:
    try:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        tokens = [token(v) for v in uniques]
    except TypeError as err:
        kind = str(err).removeprefix("unhashable type: ").strip("'")
        raise DataError(f"feature column {col.name!r} holds {kind} values (nested or binary data), which cannot be "
                        "a feature; declare it `kind: excluded` in params.yaml") from None
    if col.vocabulary is not None:
        index = {v: i for i, v in enumerate(col.vocabulary)}
        other = len(col.vocabulary)
        slots = np.array([-1 if t is None else index.get(t, other) for t in tokens] + [-1], dtype=np.int64)
    else:
        slots = np.array([-1 if t is None else bucket_of(col.name, t, col.buckets) for t in tokens] + [-1],
                         dtype=np.int64)
    slot = slots[codes]  # code -1 (missing) picks the trailing -1
    width = col.width(False)
    out = np.zeros((len(series), width), dtype=np.float64)
    rows = np.arange(len(series))
    present = slot >= 0
    out[rows[present], slot[present]] = 1.0
    out[rows[~present], width - 1] = 1.0
    return out


def parse_datetime(series: pd.Series, name: str) -> pd.Series:
    """The column as UTC times; a value that is present but does not parse is one clear error."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return series.dt.tz_localize("UTC")
    parsed = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    bad = int((parsed.isna() & series.notna()).sum())
    if bad:
        raise DataError(f"datetime feature column {name!r}: {bad} value(s) do not parse as ISO 8601 dates/times. "
                        "Fix the data, or declare the column `kind: categorical` or `excluded` in params.yaml.")
    return parsed


def _datetime(series: pd.Series, col: ColumnEncoding) -> np.ndarray:
    times = parse_datetime(series, col.name)
    missing = times.isna().to_numpy()
    parts = []
    for part in col.parts:
        values = (times.dt.dayofweek if part == "weekday" else getattr(times.dt, part)).to_numpy(np.float64,
                                                                                                 na_value=0.0)
        if part == "year":
            values = np.where(missing, 0.0, values - YEAR_EPOCH)  # log1p(2020) and log1p(2021) barely differ
        parts.append(np.sign(values) * np.log1p(np.abs(values)))
    return np.stack([*parts, missing.astype(np.float64)], axis=1)


# --- resolving the declared kinds against the data's types ------------------------------

def infer_kind(dtype) -> str | None:
    """The kind a plain feature name gets from its column type; None when no kind can read it."""
    if pd.api.types.is_bool_dtype(dtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)
            or isinstance(dtype, pd.CategoricalDtype)):
        return "categorical"
    return None


def source_type(dtype) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "long"
    if pd.api.types.is_numeric_dtype(dtype):
        return "double"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "string"


def resolve(specs: tuple[FeatureSpec, ...], dtypes: dict, *, model: str) -> Encoder:
    """The encoder for the declared features and the data's column types; every problem in one error."""
    problems, columns = [], []
    for spec in specs:
        if spec.kind == "excluded":
            continue
        dtype = dtypes.get(spec.name, np.dtype("float64"))  # a column with no rows: read as missing numbers
        kind = spec.kind or infer_kind(dtype)
        if kind is None:
            problems.append(f"{spec.name!r} has type {dtype}, which no feature kind can read "
                            "(declare it `kind: excluded`)")
            continue
        if kind == "numeric" and not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            problems.append(f"{spec.name!r} is declared numeric but has type {dtype} (text?); "
                            "declare it `kind: categorical`")
            continue
        if model == "cnn" and kind != "numeric":
            problems.append(f"{spec.name!r} is {kind}, but train.model cnn reads numeric pixels only")
            continue
        vocabulary = None if spec.vocabulary is None else tuple(token(v) for v in spec.vocabulary)
        columns.append(ColumnEncoding(
            name=spec.name, kind=kind, source_type=source_type(dtype),
            buckets=(spec.buckets or DEFAULT_BUCKETS) if kind == "categorical" and vocabulary is None else 0,
            vocabulary=vocabulary if kind == "categorical" else None,
            parts=(spec.parts or DEFAULT_DATETIME_PARTS) if kind == "datetime" else ()))
    if problems:
        raise DataError("feature column(s) cannot be encoded:\n" + "\n".join(f"  - {p}" for p in problems)
                        + "\nFix data.columns.features in params.yaml.")
    return Encoder(columns=tuple(columns), pixels=model == "cnn")


def check_values(batch: pd.DataFrame, encoder: Encoder) -> None:
    """What only the values show: nested/binary values in a text column, datetimes that do not parse."""
    for col in encoder.columns:
        if col.kind == "categorical" and pd.api.types.is_object_dtype(batch[col.name].dtype):
            _categorical(batch[col.name], col)
        elif col.kind == "datetime":
            parse_datetime(batch[col.name], col.name)

