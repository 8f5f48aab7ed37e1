"""The feature encoder: per record, declared once, and every bad input named by its column."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from oblivio import ingestion
from oblivio.config import parse_params
from oblivio.data.encoding import DEFAULT_BUCKETS, bucket_of, resolve
from oblivio.errors import ConfigError, DataError, ValidationFailed

SECRET = "5eed" * 16
FEATURES = ["a", "region", {"name": "plan", "kind": "categorical", "vocabulary": ["basic", "pro"]}, "active",
            {"name": "signup", "kind": "datetime", "parts": ["year", "month", "weekday"]}]


def frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "rid": [f"r{i}" for i in range(n)], "person": [f"C-{i // 2}" for i in range(n)],
        "y": rng.choice(["no", "yes"], n).astype(object),
        "a": np.where(rng.random(n) > 0.2, rng.normal(size=n), np.nan),
        "region": pd.Series(rng.choice(["north", "south", "east"], n)).where(rng.random(n) > 0.2, None),
        "plan": pd.Series(rng.choice(["basic", "pro", "gold"], n)).where(rng.random(n) > 0.1, None),
        "active": rng.random(n) > 0.5,
        "signup": pd.Series([f"2019-0{1 + i % 9}-1{i % 10}" for i in range(n)]).where(rng.random(n) > 0.1, None),
    })


def encoder_of(df: pd.DataFrame, features=FEATURES):
    params = parse_params({"data": {"label_domain": ["no", "yes"], "columns": {"features": features}}})
    return resolve(params.data.columns.specs(), dict(df.dtypes), model="mlp")


def test_kinds_are_inferred_from_types_and_declared_options_kept():
    enc = encoder_of(frame())
    kinds = {c.name: (c.kind, c.source_type) for c in enc.columns}
    assert kinds == {"a": ("numeric", "double"), "region": ("categorical", "string"),
                     "plan": ("categorical", "string"), "active": ("categorical", "boolean"),
                     "signup": ("datetime", "string")}
    # numeric 2, hashed buckets + missing, vocabulary + other + missing, boolean hashed, 3 parts + missing
    assert enc.width == 2 + (DEFAULT_BUCKETS + 1) + (2 + 1 + 1) + (DEFAULT_BUCKETS + 1) + (3 + 1)
    assert len(enc.output_names()) == enc.width


def test_each_row_is_encoded_from_its_own_values_alone():
    df = frame()
    enc = encoder_of(df)
    whole = enc.transform(df)
    one_by_one = np.concatenate([enc.transform(df.iloc[[i]]) for i in range(len(df))])
    np.testing.assert_array_equal(whole, one_by_one)
    np.testing.assert_array_equal(enc.transform(df.iloc[::-1])[::-1], whole)


def test_categorical_slots_vocabulary_other_and_missing():
    df = pd.DataFrame({"plan": ["basic", "pro", "gold", None], "region": ["north", None, "north", "x"],
                       "a": [1.0, np.nan, -2.0, 0.0], "active": [True, False, True, False],
                       "signup": ["2020-02-29", None, "2021-12-31T23:00", "2019-01-01"]})
    enc = encoder_of(df)
    names = enc.output_names()
    x = enc.transform(df)
    col = {n: x[:, i] for i, n in enumerate(names)}
    np.testing.assert_array_equal(col["plan=basic"], [1, 0, 0, 0])
    np.testing.assert_array_equal(col["plan:other"], [0, 0, 1, 0])
    np.testing.assert_array_equal(col["plan:missing"], [0, 0, 0, 1])
    north = f"region#{bucket_of('region', 'north', DEFAULT_BUCKETS)}"
    np.testing.assert_array_equal(col[north][[0, 2]], [1, 1])
    np.testing.assert_array_equal(col["region:missing"], [0, 1, 0, 0])
    assert x[:, [n.startswith("region") for n in names]].sum(axis=1).tolist() == [1, 1, 1, 1]  # one slot each
    np.testing.assert_allclose(col["a"], [np.log1p(1.0), 0.0, -np.log1p(2.0), 0.0], rtol=1e-6)
    np.testing.assert_array_equal(col["a:missing"], [0, 1, 0, 0])
    np.testing.assert_allclose(col["signup.year"][[0, 2]], np.log1p([20, 21]), rtol=1e-6)
    times = pd.to_datetime(df["signup"], format="ISO8601")
    np.testing.assert_allclose(col["signup.weekday"][[0, 2, 3]], np.log1p(times.dt.dayofweek[[0, 2, 3]]), rtol=1e-6)
    np.testing.assert_array_equal(col["signup:missing"], [0, 1, 0, 0])


def test_a_code_is_the_same_category_whatever_type_it_was_read_as():
    """Training reads a code column with missing values as float64; a user's rows may hold ints or text."""
    enc = encoder_of(pd.DataFrame({"c": [1.0, 3.0, np.nan]}),
                     [{"name": "c", "kind": "categorical", "vocabulary": [1, 2, 3]}])
    as_float = enc.transform(pd.DataFrame({"c": [1.0, 3.0, np.nan]}))
    np.testing.assert_array_equal(enc.transform(pd.DataFrame({"c": pd.array([1, 3, None], dtype="Int64")})), as_float)
    np.testing.assert_array_equal(enc.transform(pd.DataFrame({"c": ["1", "3", None]})), as_float)


@pytest.mark.parametrize("entry, message", [
    ({"name": "plan", "kind": "categoric"}, "column 'plan'): kind must be one of"),
    ({"name": "plan", "kind": "categorical", "vocabulary": "basic,pro"}, "column 'plan'): vocabulary must be a"),
    ({"name": "plan", "kind": "numeric", "vocabulary": ["a"]}, "column 'plan'): a vocabulary needs kind"),
    ({"name": "signup", "kind": "datetime", "parts": ["decade"]}, "column 'signup'): parts must be"),
    ({"name": "plan", "kind": "categorical", "colour": 1}, "column 'plan'): colour is not a known option"),
])
def test_bad_feature_declarations_name_the_column(entry, message):
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"columns": {"features": ["a", entry]}}})
    assert message in str(err.value)


def test_every_bad_declaration_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"label_domain": ["no", 1], "columns": {"features": [
            {"name": "x", "kind": "bogus"}, {"name": "y", "kind": "categorical", "vocabulary": 3}]}}})
    text = str(err.value)
    assert "3 problem(s)" in text and "'x'" in text and "'y'" in text and "not both" in text


def workspace(root: Path, df: pd.DataFrame, suffix: str = ".parquet", features=FEATURES, **data) -> Path:
    root.mkdir(parents=True)
    (root / ".oblivio").mkdir()
    (root / ".oblivio" / "secret").write_text(SECRET + "\n")
    source = root / f"table{suffix}"
    if isinstance(df, pa.Table):
        pq.write_table(df, source)
    elif suffix == ".csv":
        df.to_csv(source, index=False)
    else:
        df.to_parquet(source, index=False)
    params = {"data": {"source": source.name, "min_rows": 20, "label_domain": ["no", "yes"],
                       "columns": {"record_id": "rid", "subject_id": "person", "label": "y", "features": features},
                       **data},
              "sisa": {"shards": 2, "slices": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_a_string_table_ingests_and_reports_null_and_vocabulary_counts(tmp_path):
    root = workspace(tmp_path / "ws", frame())
    summary = ingestion.ingest(root)
    validation = summary["validation"]
    df = frame()
    assert validation["null_fraction"]["region"] == round(df["region"].isna().mean(), 6)
    assert validation["outside_vocabulary"] == {"plan": int((df["plan"] == "gold").sum())}  # a count, no value
    assert summary["input_width"] == encoder_of(df).width


def assert_nothing_written(root: Path) -> None:
    assert not (root / "data").exists()


def test_a_label_outside_a_string_domain_fails_validation(tmp_path):
    df = frame()
    df.loc[3, "y"] = "maybe"
    root = workspace(tmp_path / "ws", df)
    with pytest.raises(ValidationFailed) as err:
        ingestion.ingest(root)
    assert "on y: 1 unexpected value(s)" in str(err.value) and "allowed: ['no', 'yes']" in str(err.value)
    assert "maybe" not in str(err.value).split("allowed")[0]
    assert_nothing_written(root)


def test_a_datetime_that_does_not_parse_names_the_column(tmp_path):
    df = frame()
    df.loc[5, "signup"] = "next tuesday"
    root = workspace(tmp_path / "ws", df, suffix=".csv")
    with pytest.raises(DataError) as err:
        ingestion.ingest(root)
    assert "'signup': 1 value(s) do not parse" in str(err.value) and "next tuesday" not in str(err.value)
    assert_nothing_written(root)


@pytest.mark.parametrize("column, values", [
    ("blob", pa.array([b"\x00\x01"] * 60, type=pa.binary())),
    ("tags", pa.array([["a", "b"]] * 60, type=pa.list_(pa.string()))),
    ("address", pa.array([{"city": "x"}] * 60, type=pa.struct([("city", pa.string())]))),
])
def test_a_nested_or_binary_feature_is_one_error_naming_it(tmp_path, column, values):
    table = pa.Table.from_pandas(frame(), preserve_index=False).append_column(column, values)
    root = workspace(tmp_path / "ws", table, features=["a", column])
    with pytest.raises(DataError) as err:
        ingestion.ingest(root)
    assert f"feature column {column!r} holds" in str(err.value) and "kind: excluded" in str(err.value)
    assert_nothing_written(root)


def test_a_text_column_declared_numeric_is_named(tmp_path):
    root = workspace(tmp_path / "ws", frame(), features=["a", {"name": "region", "kind": "numeric"}])
    with pytest.raises(DataError, match="'region' is declared numeric but has type"):
        ingestion.ingest(root)
    assert_nothing_written(root)
