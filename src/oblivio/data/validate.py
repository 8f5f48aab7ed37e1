"""The schema gate: declared columns, then a Great Expectations suite built from them.

The suite is generated from `params.yaml` (nothing is hard-wired to the built-in data):
ids present and unique, labels in the declared domain, numeric features with bounded
null rates, enough rows. Failures are reported by expectation and count, never by value,
because the values are personal data.

A table is validated a batch at a time (`TableValidation`), so no step holds all its
rows: GX runs the column expectations on every batch and their counts are summed; the
two that need the whole table, row count and record-id uniqueness, are counted here
(ids as 128-bit hashes, 16 bytes a row) and reported under the same GX names.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from oblivio.config import DataParams
from oblivio.data.encoding import Encoder
from oblivio.errors import DataError, ValidationFailed

NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "bool"]
ROW_COUNT = "expect_table_row_count_to_be_between"
UNIQUE = "expect_column_values_to_be_unique"
ID_HASH_KEYS = ("oblivio-unique-1", "oblivio-unique-2")  # two 64-bit hashes: collisions are out of reach


def numpy_numeric(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Nullable pandas numbers (Int64, Float64, boolean; Parquet gives them) as float64.

    The model reads floats anyway, and GX's type check knows numpy dtypes only.
    """
    nullable = [c for c in columns if isinstance(df[c].dtype, pd.api.extensions.ExtensionDtype)
                and pd.api.types.is_numeric_dtype(df[c].dtype)]
    if not nullable:
        return df
    return df.assign(**{c: df[c].astype("float64") for c in nullable})


def check_columns(columns: Iterable[str], data: DataParams) -> None:
    """Every declared column exists (the expectations cannot even be evaluated otherwise)."""
    cols = data.columns
    present = set(columns)
    declared = [*([] if cols.derive_record_id else [cols.record_id]), cols.subject_id, cols.label, *cols.features]
    missing = [c for c in declared if c not in present]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(
            f"The data from {data.source!r} lacks declared column(s): {shown}. "
            "Fix data.columns in params.yaml or the source file."
        )


def build_suite(data: DataParams, encoder: Encoder | None = None):
    """The expectations GX checks on every batch; their counts add up over the table.

    Numeric features must hold numbers; every feature's null share is bounded; a declared
    vocabulary gets a value-set expectation that never fails the run (values outside it go
    to the "other" bucket) but whose count is reported. Without an encoder (a table checked
    on its own) every feature is taken as numeric."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    cols = data.columns
    suite = gx.ExpectationSuite(name="oblivio-schema")
    for col in (cols.record_id, cols.subject_id, cols.label):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=cols.label, value_set=list(data.label_domain)))
    kinds = {c.name: c for c in encoder.columns} if encoder is not None else {}
    for col in cols.features:
        encoding = kinds.get(col)
        if encoding is None or encoding.kind == "numeric":
            suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=NUMERIC_TYPES))
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=1.0 - data.max_null_fraction))
        if encoding is not None and encoding.vocabulary is not None:
            declared = next(s for s in cols.specs() if s.name == col).vocabulary
            suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(declared), mostly=0.0,
                                                                  meta={"report_only": True}))
    return suite


def validate(df: pd.DataFrame, data: DataParams) -> dict:
    """Validate one whole frame; raise `ValidationFailed` listing every failed expectation.

    Returns a summary (`evaluated`, `passed`) for the run record.
    """
    check_columns(df.columns, data)
    table = TableValidation(data)
    table.add(numpy_numeric(df, data.columns.features))
    return table.finish()


@dataclass
class _Tally:
    """One expectation's results, summed over the batches seen so far."""

    config: object
    element_count: int = 0
    unexpected_count: int = 0
    missing_count: int = 0
    counted: bool = False  # a map expectation: its counts decide, not the batches' verdicts
    failed_result: dict | None = None  # the first failing batch's result (aggregate expectations)
    exception: str | None = None

    def add(self, r) -> None:
        info = r.result or {}
        if r.exception_info and r.exception_info.get("raised_exception"):
            message = (r.exception_info.get("exception_message") or "").splitlines() or [""]
            self.exception = self.exception or message[0][:160]
        elif "unexpected_count" in info:
            self.counted = True
            self.element_count += info["element_count"]
            self.unexpected_count += info["unexpected_count"]
            self.missing_count += info.get("missing_count", 0)
        elif not r.success and self.failed_result is None:
            self.failed_result = dict(info)

    def failure(self) -> dict | None:
        """The failure as `_describe_failure` reports it, or None when the expectation holds."""
        if self.exception is not None:
            return _describe_failure(self.config, {}, self.exception)
        if not self.counted:
            return None if self.failed_result is None else _describe_failure(self.config, self.failed_result)
        considered = self.element_count - self.missing_count
        mostly = self.config.kwargs.get("mostly")
        if considered == 0 or (considered - self.unexpected_count) / considered >= (1.0 if mostly is None else mostly):
            return None
        return _describe_failure(self.config, {"unexpected_count": self.unexpected_count,
                                               "unexpected_percent": 100 * self.unexpected_count / considered})


class TableValidation:
    """The suite over a table given batch by batch; `finish` raises if any expectation failed.

    Counts are summed exactly as GX counts one frame: a null share is judged over the
    whole table (`mostly`), not per batch, and a record id repeated in two batches is
    a duplicate like any other.
    """

    def __init__(self, data: DataParams, encoder: Encoder | None = None):
        import logging

        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # no INFO chatter per validation
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = context.data_sources.add_pandas("oblivio").add_dataframe_asset(name="ingest")
        batch = asset.add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(build_suite(data, encoder))
        self._definition = context.validation_definitions.add(
            gx.ValidationDefinition(name="ingest", data=batch, suite=suite))
        self._tallies = {e.id: _Tally(e.configuration) for e in suite.expectations}
        self._data = data
        self._rows = 0
        self._null_ids = 0
        self._id_hashes: list[np.ndarray] = []
        self._nulls = {c: 0 for c in data.columns.features}

    def add(self, df: pd.DataFrame) -> None:
        """Validate one batch (declared columns present, numbers as numpy dtypes)."""
        result = self._definition.run(batch_parameters={"dataframe": df}, result_format="BASIC")
        for r in result.results:
            self._tallies[r.expectation_config.id].add(r)
        ids = df[self._data.columns.record_id]
        present = ids[ids.notna()]
        self._rows += len(df)
        for c in self._nulls:
            self._nulls[c] += int(df[c].isna().sum())
        self._null_ids += len(ids) - len(present)
        self._id_hashes.append(np.stack([pd.util.hash_pandas_object(present, index=False, hash_key=key).to_numpy()
                                         for key in ID_HASH_KEYS], axis=1))

    def finish(self) -> dict:
        failures = [f for f in (self._row_count(), *(t.failure() for t in self._tallies.values()), self._unique())
                    if f is not None]
        evaluated = len(self._tallies) + 2
        outside = {t.config.kwargs["column"]: t.unexpected_count for t in self._tallies.values()
                   if (t.config.meta or {}).get("report_only")}
        if failures:
            lines = "\n".join(f"  - {f['expectation']} on {f['column']}: {f['detail']}" for f in failures)
            raise ValidationFailed(
                f"Data validation failed: {len(failures)} of {evaluated} expectations not met "
                f"for source {self._data.source!r}:\n{lines}\nNothing was written. "
                "Fix the data or params.yaml (data section).",
                failures,
            )
        summary = {"evaluated": evaluated, "passed": evaluated,
                   "null_fraction": {c: round(n / self._rows, 6) for c, n in self._nulls.items()} if self._rows else {}}
        if outside:
            summary["outside_vocabulary"] = outside  # counts only: the values may be personal
        return summary

    def _row_count(self) -> dict | None:
        if self._rows >= self._data.min_rows:
            return None
        return {"expectation": ROW_COUNT, "column": "(table)",
                "detail": f"observed {self._rows}; minimum: {self._data.min_rows}"}

    def _unique(self) -> dict | None:
        repeated = _repeated(self._id_hashes)
        if not repeated:
            return None
        percent = 100 * repeated / (self._rows - self._null_ids)
        return {"expectation": UNIQUE, "column": self._data.columns.record_id,
                "detail": f"{repeated} unexpected value(s) ({percent:.2f} %)"}


def _repeated(parts: list[np.ndarray]) -> int:
    """How many rows hold a value another row holds too (GX's count); empties `parts` to save memory."""
    if not parts:
        return 0
    values = np.concatenate(parts).view([("hi", "<u8"), ("lo", "<u8")]).ravel()
    parts.clear()
    values.sort()
    same = values[1:] == values[:-1]
    repeated = np.zeros(len(values), dtype=bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    return int(repeated.sum())


def _describe_failure(cfg, info: dict, exception: str | None = None) -> dict:
    if exception is not None:
        detail = f"could not be evaluated ({exception})"
    elif "unexpected_count" in info:
        detail = f"{info['unexpected_count']} unexpected value(s) ({info.get('unexpected_percent', 0):.2f} %)"
    elif "observed_value" in info:
        detail = f"observed {info['observed_value']}"
    else:
        detail = "not met"
    kwargs = cfg.kwargs
    if "value_set" in kwargs:
        detail += f"; allowed: {list(kwargs['value_set'])}"
    if "min_value" in kwargs and kwargs.get("min_value") is not None:
        detail += f"; minimum: {kwargs['min_value']}"
    return {"expectation": cfg.type, "column": kwargs.get("column", "(table)"), "detail": detail}
