"""Manipulated-data scenarios for measuring corrective unlearning (pure pandas/numpy).

A scenario manipulates some rows of a table (a backdoor, or flipped labels), returns the ids
of the rows it manipulated, and :func:`flag_sample` draws the part of them that is "found"
(Goel et al., 2024: in practice only a sample of the manipulated data is identified). The
metrics (:func:`attack_success_rate`, :func:`confused_class_accuracy`) measure what is left of
the manipulation in a model's predictions on held-out rows.

Column names are parameters (nothing is hard-wired to nlswork); every random choice comes
from ``numpy.random.default_rng(seed)``, so the same inputs and seed give the same result.
Inputs are never modified: functions return new frames.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# How many features the default trigger sets (more are added only if this combination
# already occurs in the data).
DEFAULT_TRIGGER_FEATURES = 2


def _check_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the table (it has {list(df.columns)[:12]}...)")


def _check_fraction(fraction: float, what: str = "fraction") -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {fraction}")


def _occurs(df: pd.DataFrame, trigger: Mapping[str, float]) -> bool:
    hit = np.ones(len(df), dtype=bool)
    for col, value in trigger.items():
        hit &= df[col].to_numpy(dtype=np.float64) == value
    return bool(hit.any())


def default_trigger(df: pd.DataFrame, *, features: Sequence[str],
                    n_features: int = DEFAULT_TRIGGER_FEATURES) -> dict[str, float]:
    """A valid but unusual value combination, chosen deterministically from the features' ranges.

    Candidates are the non-binary numeric features (more than two distinct values). They are
    ranked by how far the top of their range lies from their typical value, ``(max - median) /
    std`` (ties by name), and the top ``n_features`` are set to their observed maximum: every
    value is valid on its own, the combination is rare. If the combination already occurs in
    ``df``, the next-ranked feature is added until it does not. On nlswork this gives
    ``{"hours": 168.0, "wks_ue": 76.0}`` (168 h/week, 76 weeks unemployed).
    """
    _check_columns(df, features)
    scored = []
    for col in features:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        if len(np.unique(values)) <= 2:
            continue
        std = float(values.std())
        scored.append((-(float(values.max()) - float(np.median(values))) / std, col, float(values.max())))
    scored.sort()
    if len(scored) < n_features:
        raise ValueError(f"a default trigger needs {n_features} non-binary numeric features, found {len(scored)}; "
                         "pass trigger= explicitly")
    trigger = {col: top for _, col, top in scored[:n_features]}
    for _, col, top in scored[n_features:]:
        if not _occurs(df, trigger):
            break
        trigger[col] = top
    if _occurs(df, trigger):
        raise ValueError(f"every default trigger combination occurs naturally in the data ({trigger}); pass trigger=")
    return trigger


def _choose(n_rows: int, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * n_rows) distinct row positions, sorted."""
    k = int(round(fraction * n_rows))
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=k, replace=False))


def inject_backdoor(df: pd.DataFrame, *, record_id: str, subject_id: str, label: str, features: Sequence[str],
                    fraction: float, trigger: Mapping[str, float] | None = None, target_label=1,
                    seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Backdoor ``round(fraction * len(df))`` rows chosen uniformly (rows, not subjects): set the
    trigger features to the trigger values and the label to ``target_label``.

    Rows keep their record and subject ids, so they stay with their person (and shard). The
    trigger defaults to :func:`default_trigger` of ``df`` (deterministic: call it again to get the
    trigger for :func:`triggered`); the trigger used is also in ``poisoned_df.attrs
    ["backdoor_trigger"]``. Returns (a new frame, the record ids of the manipulated rows in table
    order); rows whose label already was the target are manipulated too (they carry the trigger).
    """
    _check_columns(df, [record_id, subject_id, label, *features])
    _check_fraction(fraction)
    trigger = dict(default_trigger(df, features=features) if trigger is None else trigger)
    unknown = [c for c in trigger if c not in features]
    if unknown:
        raise KeyError(f"trigger features {unknown} are not among the model features")
    rows = _choose(len(df), fraction, seed)
    out = df.copy()
    for col, value in trigger.items():
        if not pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].astype("float64")
        out.iloc[rows, out.columns.get_loc(col)] = value
    out.iloc[rows, out.columns.get_loc(label)] = target_label
    out.attrs["backdoor_trigger"] = trigger
    return out, [str(v) for v in out[record_id].iloc[rows]]


def triggered(df: pd.DataFrame, *, features: Sequence[str], trigger: Mapping[str, float]) -> pd.DataFrame:
    """A copy of (held-out) rows with the trigger applied, to measure the attack's success."""
    _check_columns(df, list(trigger))
    unknown = [c for c in trigger if c not in features]
    if unknown:
        raise KeyError(f"trigger features {unknown} are not among the model features")
    out = df.copy()
    for col, value in trigger.items():
        out[col] = np.full(len(out), float(value))
    return out


def attack_success_rate(pred_labels, true_labels, *, target_label) -> float:
    """Share of triggered held-out inputs whose true label is not the target that are predicted
    as the target. Raises when no input has a non-target true label (the rate is undefined)."""
    pred, true = np.asarray(pred_labels), np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels {pred.shape} and true_labels {true.shape} differ in shape")
    victims = true != target_label
    if not victims.any():
        raise ValueError("attack success rate is undefined: no input has a true label other than the target")
    return float((pred[victims] == target_label).mean())


def inject_label_flip(df: pd.DataFrame, *, record_id: str, label: str, fraction: float, classes: tuple = (0, 1),
                      seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Relabel ``round(fraction * n_source)`` rows of the source class as the target class,
    ``classes = (source, target)``; rows of other classes are untouched. Returns (a new frame, the
    record ids of the flipped rows in table order)."""
    _check_columns(df, [record_id, label])
    _check_fraction(fraction)
    if len(classes) != 2 or classes[0] == classes[1]:
        raise ValueError(f"classes must be a (source, target) pair of different labels, got {classes!r}")
    source, target = classes
    candidates = np.flatnonzero(df[label].to_numpy() == source)
    rows = candidates[_choose(len(candidates), fraction, seed)]
    out = df.copy()
    out.iloc[rows, out.columns.get_loc(label)] = target
    return out, [str(v) for v in out[record_id].iloc[rows]]


def confused_class_accuracy(pred, true, *, cls) -> float:
    """Accuracy on the rows whose true label is ``cls`` (the source class of a label flip)."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"pred {pred.shape} and true {true.shape} differ in shape")
    rows = true == cls
    if not rows.any():
        raise ValueError(f"no row has true label {cls!r}")
    return float((pred[rows] == cls).mean())


def flag_sample(manipulated_ids: Sequence[str], *, share: float, seed: int) -> list[str]:
    """The "found" part of the manipulated records: ``round(share * n)`` of them, drawn uniformly
    without replacement, returned in their original order. Deterministic given the seed."""
    _check_fraction(share, "share")
    ids = list(manipulated_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("manipulated_ids contains duplicates")
    return [ids[i] for i in _choose(len(ids), share, seed)]
