"""The schema gate: declared columns, then a Great Expectations suite built from them.

The suite is generated from `params.yaml` (nothing is hard-wired to the built-in data):
ids present and unique, labels in the declared domain, numeric features with bounded
null rates, enough rows. Failures are reported by expectation and count, never by value,
because the values are personal data.
"""
from __future__ import annotations

import pandas as pd

from oblivio.config import DataParams
from oblivio.errors import DataError, ValidationFailed

NUMERIC_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "bool"]


def numpy_numeric(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Nullable pandas numbers (Int64, Float64, boolean; Parquet gives them) as float64.

    The model reads floats anyway, and GX's type check knows numpy dtypes only.
    """
    nullable = [c for c in columns if isinstance(df[c].dtype, pd.api.extensions.ExtensionDtype)
                and pd.api.types.is_numeric_dtype(df[c].dtype)]
    if not nullable:
        return df
    return df.assign(**{c: df[c].astype("float64") for c in nullable})


def check_columns(df: pd.DataFrame, data: DataParams) -> None:
    """Every declared column exists (the expectations cannot even be evaluated otherwise)."""
    cols = data.columns
    declared = [cols.record_id, cols.subject_id, cols.label, *cols.features]
    missing = [c for c in declared if c not in df.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataError(
            f"The data from {data.source!r} lacks declared column(s): {shown}. "
            "Fix data.columns in params.yaml or the source file."
        )


def build_suite(data: DataParams):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    cols = data.columns
    suite = gx.ExpectationSuite(name="oblivio-schema")
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=data.min_rows))
    for col in (cols.record_id, cols.subject_id, cols.label):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column=cols.record_id))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=cols.label, value_set=list(data.label_domain)))
    for col in cols.features:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=NUMERIC_TYPES))
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=1.0 - data.max_null_fraction))
    return suite


def validate(df: pd.DataFrame, data: DataParams) -> dict:
    """Run the suite; raise `ValidationFailed` listing every failed expectation.

    Returns a summary (`evaluated`, `passed`) for the run record.
    """
    check_columns(df, data)
    df = numpy_numeric(df, data.columns.features)
    import logging

    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # no INFO chatter per validation

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("oblivio").add_dataframe_asset(name="ingest")
    batch = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(build_suite(data))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="ingest", data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": df}, result_format="BASIC")
    failures = [_describe_failure(r) for r in result.results if not r.success]
    if failures:
        lines = "\n".join(f"  - {f['expectation']} on {f['column']}: {f['detail']}" for f in failures)
        raise ValidationFailed(
            f"Data validation failed: {len(failures)} of {len(result.results)} expectations not met "
            f"for source {data.source!r}:\n{lines}\nNothing was written. Fix the data or params.yaml (data section).",
            failures,
        )
    return {"evaluated": len(result.results), "passed": len(result.results)}


def _describe_failure(r) -> dict:
    cfg = r.expectation_config
    info = r.result or {}
    if r.exception_info and r.exception_info.get("raised_exception"):
        detail = f"could not be evaluated ({r.exception_info.get('exception_message', '').splitlines()[0][:160]})"
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
