"""The schema gate: declared columns, then the real Great Expectations suite."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oblivio.config import Columns, DataParams
from oblivio.errors import DataError, ValidationFailed

N = 50
DUP_ID = "dup-XYZ-123"
SUBJECT_MARK = "subj-QWE-987"

DATA = DataParams(
    source="synthetic-test",
    columns=Columns(record_id="rid", subject_id="person", label="y", features=("f1", "f2", "f3")),
    label_domain=(0, 1, 2),
    max_null_fraction=0.2,
    min_rows=20,
)


def valid_frame(n: int = N) -> pd.DataFrame:
    return pd.DataFrame({
        "rid": [f"rec-{i:03d}" for i in range(n)],
        "person": [f"{SUBJECT_MARK}-{i // 2}" for i in range(n)],
        "y": np.arange(n, dtype="int64") % 3,
        "f1": np.linspace(0.0, 1.0, n),
        "f2": np.arange(n, dtype="int64"),
        "f3": np.ones(n, dtype="float32"),
        "extra": ["not declared"] * n,  # undeclared columns are allowed
    })


@pytest.fixture(scope="module")
def validate():
    from oblivio.data import validate as module  # pulls in Great Expectations (~3 s), once

    return module.validate


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return valid_frame()


def run_failing(validate, df: pd.DataFrame, data: DataParams = DATA) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as exc:
        validate(df, data)
    return exc.value


def failed(err: ValidationFailed) -> set[tuple[str, str]]:
    return {(f["expectation"], f["column"]) for f in err.report}


def test_valid_frame_passes_with_every_expectation_evaluated(validate, frame) -> None:
    summary = validate(frame, DATA)
    # 1 row count + 3 not-null ids/label + unique + in-set + 2 per feature
    assert {k: summary[k] for k in ("evaluated", "passed")} == {"evaluated": 1 + 3 + 1 + 1 + 2 * 3, "passed": 12}


def test_validation_does_not_modify_the_frame(validate, frame) -> None:
    copy = frame.copy()
    validate(frame, DATA)
    pd.testing.assert_frame_equal(frame, copy)


def test_missing_declared_columns_raise_data_error_naming_them(validate, frame) -> None:
    df = frame.drop(columns=["f2", "y"])
    with pytest.raises(DataError) as exc:
        validate(df, DATA)
    assert not isinstance(exc.value, ValidationFailed)
    msg = str(exc.value)
    assert "lacks declared column(s): y, f2." in msg  # exactly the missing ones, in declared order
    assert "synthetic-test" in msg


def test_many_missing_columns_are_summarised(frame) -> None:
    from oblivio.data.validate import check_columns

    data = DataParams(columns=Columns(record_id="rid", subject_id="person", label="y",
                                      features=tuple(f"g{i}" for i in range(13))))
    with pytest.raises(DataError, match="and 3 more"):
        check_columns(frame.columns, data)


def test_several_failures_are_all_listed_in_one_error(validate, frame) -> None:
    df = frame.iloc[:15].copy()  # too few rows: min_rows is 20
    df.loc[3, "rid"] = DUP_ID
    df.loc[7, "rid"] = DUP_ID  # duplicated record id
    df.loc[5, "y"] = 9  # outside label_domain
    df["f2"] = [f"v{i}" for i in range(len(df))]  # a string-typed feature
    df.loc[0:5, "f1"] = np.nan  # 6 of 15 = 40 % nulls > 20 %
    err = run_failing(validate, df)

    assert failed(err) == {
        ("expect_table_row_count_to_be_between", "(table)"),
        ("expect_column_values_to_be_unique", "rid"),
        ("expect_column_values_to_be_in_set", "y"),
        ("expect_column_values_to_be_in_type_list", "f2"),
        ("expect_column_values_to_not_be_null", "f1"),
    }
    assert len(err.report) == 5
    by_col = {f["column"]: f["detail"] for f in err.report}
    assert by_col["(table)"].startswith("observed 15") and "minimum: 20" in by_col["(table)"]
    assert by_col["rid"].startswith("2 unexpected value(s)")
    assert by_col["y"].startswith("1 unexpected value(s)") and "allowed: [0, 1, 2]" in by_col["y"]
    assert by_col["f1"].startswith("6 unexpected value(s) (40.00 %)")
    assert "str" in by_col["f2"] or "object" in by_col["f2"]

    msg = str(err)
    assert "5 of 12 expectations not met" in msg
    assert "Nothing was written" in msg
    for expectation, column in failed(err):
        assert f"{expectation} on {column}" in msg
    # values are personal data: never in the message or the report
    for secret_value in (DUP_ID, SUBJECT_MARK, "v0", "v14"):
        assert secret_value not in msg
        assert secret_value not in repr(err.report)
    assert isinstance(err, DataError)  # the CLI treats it as a user-fixable data problem


def test_null_ids_and_labels_fail(validate, frame) -> None:
    df = frame.copy()
    df["person"] = df["person"].astype(object)
    df.loc[4, "person"] = None
    df["y"] = df["y"].astype("float64")
    df.loc[8, "y"] = np.nan
    err = run_failing(validate, df)
    assert ("expect_column_values_to_not_be_null", "person") in failed(err)
    assert ("expect_column_values_to_not_be_null", "y") in failed(err)
    assert SUBJECT_MARK not in str(err)


def test_null_share_at_the_limit_passes_and_above_it_fails(validate, frame) -> None:
    at_limit = frame.copy()
    at_limit.loc[0:9, "f3"] = np.nan  # 10 / 50 = 20 % = max_null_fraction
    validate(at_limit, DATA)
    above = frame.copy()
    above.loc[0:10, "f3"] = np.nan  # 11 / 50 = 22 %
    err = run_failing(validate, above)
    assert failed(err) == {("expect_column_values_to_not_be_null", "f3")}


def test_min_rows_boundary(validate, frame) -> None:
    validate(frame.iloc[:20], DATA)  # exactly min_rows
    err = run_failing(validate, frame.iloc[:19])
    assert failed(err) == {("expect_table_row_count_to_be_between", "(table)")}


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8", "float32", "float64", "bool"])
def test_common_numeric_feature_dtypes_pass(validate, frame, dtype: str) -> None:
    df = frame.assign(f2=(frame["f2"] % 2).astype(dtype))
    validate(df, DATA)


@pytest.mark.parametrize("dtype", ["Int64", "Float64"])
def test_nullable_numeric_feature_dtypes_listed_as_numeric_pass(validate, frame, dtype: str) -> None:
    df = frame.assign(f2=frame["f2"].astype(dtype))
    validate(df, DATA)


def test_batches_are_judged_as_one_table(validate, frame) -> None:
    from oblivio.data.validate import TableValidation

    df = frame.copy()
    df.loc[[3, 40], "rid"] = DUP_ID  # one in each batch
    df.loc[0:9, "f3"] = np.nan  # 40 % of the first batch, 20 % of the table: allowed
    table = TableValidation(DATA)
    table.add(df.iloc[:25])
    table.add(df.iloc[25:])
    with pytest.raises(ValidationFailed) as exc:
        table.finish()
    assert exc.value.report == [{"expectation": "expect_column_values_to_be_unique", "column": "rid",
                                 "detail": "2 unexpected value(s) (4.00 %)"}]
    assert "1 of 12 expectations not met" in str(exc.value) and DUP_ID not in str(exc.value)
