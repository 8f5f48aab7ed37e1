"""Manipulated-data scenarios: backdoors, label flips, the flagged sample, and their metrics."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from oblivio.unlearning.scenarios import (
    attack_success_rate,
    confused_class_accuracy,
    default_trigger,
    flag_sample,
    inject_backdoor,
    inject_label_flip,
    triggered,
)

FEATURES = ["hours", "wks_ue", "grade", "flag"]


def _table(n: int = 203, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "rid": [f"r{i}" for i in range(n)],
        "person": np.arange(n) // 3,
        "y": rng.integers(0, 2, size=n).astype("int64"),
        "hours": np.where(rng.random(n) < 0.7, 40.0, rng.integers(20, 61, size=n)).astype("float64"),
        "wks_ue": np.where(rng.random(n) < 0.8, 0.0, rng.integers(1, 30, size=n)).astype("float64"),
        "grade": rng.integers(8, 19, size=n).astype("int64"),  # an integer column on purpose
        "flag": rng.integers(0, 2, size=n).astype("float64"),  # binary: never a trigger feature
    })


def _backdoor(df, **kw):
    args = dict(record_id="rid", subject_id="person", label="y", features=FEATURES, fraction=0.1,
                trigger={"hours": 99.0, "wks_ue": 77.0}, target_label=1, seed=3)
    return inject_backdoor(df, **{**args, **kw})


# --- backdoor ------------------------------------------------------------------------


def test_backdoor_sets_trigger_and_target_on_exactly_round_fraction_rows():
    df = _table()
    original = df.copy()
    poisoned, ids = _backdoor(df)
    assert len(ids) == round(0.1 * len(df)) == 20 and len(set(ids)) == 20
    hit = poisoned["rid"].isin(ids)
    assert (poisoned.loc[hit, "hours"] == 99.0).all() and (poisoned.loc[hit, "wks_ue"] == 77.0).all()
    assert (poisoned.loc[hit, "y"] == 1).all()
    has_trigger = (poisoned["hours"] == 99.0) & (poisoned["wks_ue"] == 77.0)
    assert has_trigger.sum() == 20 and (has_trigger == hit).all()
    # everything else is untouched, ids and subjects included, and the input is not modified
    pd.testing.assert_frame_equal(poisoned.loc[~hit], original.loc[~hit])
    kept = ["rid", "person", "grade", "flag"]
    pd.testing.assert_frame_equal(poisoned[kept], original[kept])
    pd.testing.assert_frame_equal(df, original)
    assert ids == [r for r in poisoned["rid"] if r in set(ids)]  # table order
    assert poisoned.attrs["backdoor_trigger"] == {"hours": 99.0, "wks_ue": 77.0}


def test_backdoor_is_deterministic_given_the_seed():
    df = _table()
    a, ids_a = _backdoor(df, seed=5)
    b, ids_b = _backdoor(df, seed=5)
    _, ids_c = _backdoor(df, seed=6)
    assert ids_a == ids_b and ids_a != ids_c
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("fraction,expected", [(0.0, 0), (0.05, 10), (1.0, 203), (0.0074, 2)])
def test_backdoor_count_is_round_of_fraction(fraction, expected):
    _, ids = _backdoor(_table(), fraction=fraction)
    assert len(ids) == expected


def test_backdoor_target_label_and_trigger_on_an_integer_column():
    df = _table()
    poisoned, ids = _backdoor(df, trigger={"grade": 0.0, "hours": 1.0}, target_label=0)
    hit = poisoned["rid"].isin(ids)
    assert (poisoned.loc[hit, "y"] == 0).all() and (poisoned.loc[hit, "grade"] == 0).all()
    assert (poisoned.loc[~hit, "grade"] == df.loc[~hit, "grade"]).all()


def test_backdoor_rejects_bad_arguments():
    df = _table()
    with pytest.raises(KeyError, match="trigger"):
        _backdoor(df, trigger={"person": 1.0})
    with pytest.raises(ValueError, match="fraction"):
        _backdoor(df, fraction=1.5)
    with pytest.raises(KeyError):
        _backdoor(df, label="nope")


def test_default_trigger_picks_the_most_outlying_range_tops_and_never_occurs():
    df = _table()
    df.loc[7, "wks_ue"] = 200.0  # a far outlier: wks_ue ranks first
    trigger = default_trigger(df, features=FEATURES)
    assert list(trigger) == ["wks_ue", "hours"] and trigger == {"wks_ue": 200.0, "hours": 60.0}
    assert "flag" not in trigger  # binary features are never chosen
    assert not ((df["wks_ue"] == 200.0) & (df["hours"] == 60.0)).any()
    assert default_trigger(df, features=FEATURES) == trigger
    # when the combination occurs naturally, the next feature is added
    df.loc[7, "hours"] = 60.0
    widened = default_trigger(df, features=FEATURES)
    assert list(widened) == ["wks_ue", "hours", "grade"]
    hit = np.logical_and.reduce([df[c] == v for c, v in widened.items()])
    assert not hit.any()
    poisoned, ids = _backdoor(df, trigger=None)
    assert poisoned.attrs["backdoor_trigger"] == widened
    assert (poisoned.loc[poisoned["rid"].isin(ids), "grade"] == widened["grade"]).all()


def test_default_trigger_on_nlswork():
    from oblivio.data.sources import load_nlswork, nlswork_feature_names

    df = load_nlswork()
    trigger = default_trigger(df, features=nlswork_feature_names())
    assert trigger == {"hours": 168.0, "wks_ue": 76.0}
    assert not ((df["hours"] == 168.0) & (df["wks_ue"] == 76.0)).any()


def test_triggered_applies_the_trigger_to_every_row_and_nothing_else():
    df = _table()
    original = df.copy()
    out = triggered(df, features=FEATURES, trigger={"hours": 99.0, "grade": 3.0})
    assert (out["hours"] == 99.0).all() and (out["grade"] == 3.0).all()
    pd.testing.assert_frame_equal(out.drop(columns=["hours", "grade"]), original.drop(columns=["hours", "grade"]))
    pd.testing.assert_frame_equal(df, original)
    with pytest.raises(KeyError):
        triggered(df, features=["hours"], trigger={"grade": 3.0})


# --- metrics -------------------------------------------------------------------------


def test_attack_success_rate_on_a_hand_built_example():
    true = [0, 0, 0, 1, 1, 0]
    pred = [1, 1, 0, 1, 0, 0]
    # non-target rows: 0, 1, 2, 5; predicted as target: 0, 1 -> 2/4 (target rows do not count)
    assert attack_success_rate(pred, true, target_label=1) == 0.5
    assert attack_success_rate(pred, true, target_label=0) == 0.5  # rows 3, 4: only row 4 -> 0
    assert attack_success_rate(np.array(["b", "a"]), np.array(["a", "a"]), target_label="b") == 0.5
    with pytest.raises(ValueError, match="undefined"):
        attack_success_rate([1, 1], [1, 1], target_label=1)
    with pytest.raises(ValueError, match="shape"):
        attack_success_rate([1, 1], [1], target_label=1)


def test_confused_class_accuracy_on_a_hand_built_example():
    true = [0, 0, 0, 1, 1]
    pred = [0, 1, 1, 1, 0]
    assert confused_class_accuracy(pred, true, cls=0) == pytest.approx(1 / 3)
    assert confused_class_accuracy(pred, true, cls=1) == 0.5
    with pytest.raises(ValueError):
        confused_class_accuracy(pred, true, cls=2)


# --- label flip ------------------------------------------------------------------------


def test_label_flip_flips_only_the_source_class():
    df = _table()
    original = df.copy()
    n_source = int((df["y"] == 0).sum())
    flipped, ids = inject_label_flip(df, record_id="rid", label="y", fraction=0.25, classes=(0, 1), seed=1)
    assert len(ids) == round(0.25 * n_source)
    hit = flipped["rid"].isin(ids)
    assert (original.loc[hit, "y"] == 0).all() and (flipped.loc[hit, "y"] == 1).all()
    pd.testing.assert_frame_equal(flipped.loc[~hit], original.loc[~hit])
    pd.testing.assert_frame_equal(flipped.drop(columns="y"), original.drop(columns="y"))
    pd.testing.assert_frame_equal(df, original)
    again, ids_again = inject_label_flip(df, record_id="rid", label="y", fraction=0.25, classes=(0, 1), seed=1)
    assert ids_again == ids
    back, back_ids = inject_label_flip(df, record_id="rid", label="y", fraction=1.0, classes=(1, 0), seed=1)
    assert (back["y"] == 0).all() and len(back_ids) == int((df["y"] == 1).sum())
    with pytest.raises(ValueError, match="pair"):
        inject_label_flip(df, record_id="rid", label="y", fraction=0.1, classes=(1, 1), seed=1)


# --- flagged sample ----------------------------------------------------------------------


@pytest.mark.parametrize("n,share", [(100, 0.2), (993, 0.2), (7, 0.5), (10, 0.0), (10, 1.0)])
def test_flag_sample_is_a_deterministic_ordered_subset_of_the_right_size(n, share):
    ids = [f"id{i:04d}" for i in range(n)][::-1]
    flagged = flag_sample(ids, share=share, seed=4)
    assert len(flagged) == round(share * n) and len(set(flagged)) == len(flagged)
    assert set(flagged) <= set(ids)
    assert flagged == [i for i in ids if i in set(flagged)]  # original order
    assert flag_sample(ids, share=share, seed=4) == flagged
    if 0 < len(flagged) < n and n > 20:
        assert flag_sample(ids, share=share, seed=5) != flagged


def test_flag_sample_rejects_duplicates_and_bad_shares():
    with pytest.raises(ValueError, match="duplicates"):
        flag_sample(["a", "a", "b"], share=0.5, seed=0)
    with pytest.raises(ValueError, match="share"):
        flag_sample(["a", "b"], share=-0.1, seed=0)


@pytest.mark.parametrize("written", ['source: "builtin:nlswork"', "source: 'builtin:nlswork'",
                                     "source:   builtin:nlswork   # the default"])
def test_the_scenario_workspace_points_at_the_manipulated_copy_however_source_is_written(written, tmp_path):
    """params.yaml is edited as data: a quoted or commented source is swapped too."""
    from oblivio.config import parse_params
    from oblivio.scenario import params_with_source
    from oblivio.workspace import template_text

    text = template_text("params.yaml").replace("source: builtin:nlswork", written, 1)
    assert written in text
    swapped = parse_params(yaml.safe_load(params_with_source(text, tmp_path / "manipulated.parquet")))
    assert swapped.data.source == str(tmp_path / "manipulated.parquet")
    assert swapped.data.columns == parse_params(yaml.safe_load(text)).data.columns


def test_the_scenario_copy_keeps_its_record_ids_instead_of_deriving_them(tmp_path):
    from oblivio.scenario import params_with_source

    text = yaml.safe_dump({"data": {"source": "t.csv", "columns": {"derive_record_id": True}}})
    assert yaml.safe_load(params_with_source(text, tmp_path / "m.parquet"))["data"]["columns"]["derive_record_id"] is False
