"""Membership-inference metrics and the offline LiRA attack on SISA shards."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from oblivio.audit.mia import (
    METRIC_NAMES,
    auc_from_scores,
    evaluate_attack,
    lira_offline_scores,
    logit_margin,
    probability_margin,
    rmia_offline_scores,
    roc_curve,
    shard_attacks,
    shard_lira,
    true_label_log_prob,
    tpr_at_fpr,
)
from oblivio.audit.roc_plot import plot_roc

# --- AUC and ROC ---------------------------------------------------------------------


def _trapezoid(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def test_auc_equals_trapezoid_area_under_roc_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        # Few distinct values, so ties within and across the two groups are common.
        members = rng.integers(0, 8, size=rng.integers(1, 60)).astype(float)
        nonmembers = rng.integers(-2, 6, size=rng.integers(1, 60)).astype(float)
        fpr, tpr = roc_curve(member_scores=members, nonmember_scores=nonmembers)
        auc = auc_from_scores(member_scores=members, nonmember_scores=nonmembers)
        assert auc == pytest.approx(_trapezoid(fpr, tpr), abs=1e-12)
        pairwise = (members[:, None] > nonmembers[None, :]) + 0.5 * (members[:, None] == nonmembers[None, :])
        assert auc == pytest.approx(pairwise.mean(), abs=1e-12)


def test_roc_curve_moves_through_a_tie_block_in_one_step():
    # Threshold 2 admits two members and one non-member at once: there is no point
    # (0, 2/3) or (1/2, 0) on the curve.
    fpr, tpr = roc_curve(member_scores=[1.0, 2.0, 2.0], nonmember_scores=[2.0, 0.0])
    np.testing.assert_allclose(fpr, [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 2 / 3, 1.0, 1.0])
    # Pairs (member, non-member): (1,2)=0 (1,0)=1 (2,2)=.5 (2,0)=1, twice for the second 2.
    assert auc_from_scores(member_scores=[1.0, 2.0, 2.0], nonmember_scores=[2.0, 0.0]) == pytest.approx(4 / 6)


def test_auc_extremes_and_chance():
    rng = np.random.default_rng(2)
    low, high = rng.normal(size=500), rng.normal(size=500) + 100
    assert auc_from_scores(member_scores=high, nonmember_scores=low) == 1.0
    assert auc_from_scores(member_scores=low, nonmember_scores=high) == 0.0
    same = auc_from_scores(member_scores=rng.normal(size=2000), nonmember_scores=rng.normal(size=2000))
    assert abs(same - 0.5) < 0.05


def test_tpr_at_fpr_on_a_given_curve():
    fpr = np.array([0.0, 0.0, 0.005, 0.01, 0.02, 1.0])
    tpr = np.array([0.0, 0.1, 0.3, 0.4, 0.6, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.4  # a point exactly at the target counts
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.1  # only the FPR-0 points qualify
    assert tpr_at_fpr(fpr, tpr, 0.0) == 0.1
    assert tpr_at_fpr(fpr, tpr, 1.0) == 1.0


def test_tpr_at_fpr_from_scores_derived_by_hand():
    # 100 non-members: one at 3.5, the rest <= -1. Members: 5, 4, 3, -10.
    # FPR <= 1% allows the one false positive at 3.5: threshold 3 admits 5, 4, 3 -> TPR 3/4.
    # FPR <= 0.1% allows none: the threshold must exceed 3.5 -> 5 and 4 -> TPR 2/4.
    # Balanced accuracy: threshold 3 gives (3/4 + 99/100) / 2 = 0.87, but threshold -10 admits
    # all 4 members and 11 non-members (3.5, -1..-10): (1 + 89/100) / 2 = 0.945, the best.
    nonmembers = np.r_[3.5, -1.0 - np.arange(99)]
    fpr, tpr = roc_curve(member_scores=[5.0, 4.0, 3.0, -10.0], nonmember_scores=nonmembers)
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.75
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.5
    result = evaluate_attack(
        attack="hand", member_scores=[5.0, 4.0, 3.0, -10.0], nonmember_scores=nonmembers, n_bootstrap=1
    )
    assert (result.tpr_at_1pct_fpr, result.tpr_at_0_1pct_fpr) == (0.75, 0.5)
    assert result.balanced_accuracy == pytest.approx(0.945)


# --- margins -------------------------------------------------------------------------


def test_logit_margin_matches_first_principles():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0], [-2.0, 0.0, 0.3]])
    labels = np.array([0, 2, 1])
    expected = [
        1.0 - math.log(math.exp(2.0) + math.exp(3.0)),
        4.0 - math.log(math.exp(0.5) + math.exp(-1.0)),
        0.0 - math.log(math.exp(-2.0) + math.exp(0.3)),
    ]
    got = logit_margin(logits, labels)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_logit_margin_does_not_saturate_where_float32_does():
    assert logit_margin(np.array([[50.0, -50.0]], dtype=np.float32), np.array([0]))[0] == 100.0
    confident = np.array([[40.0, 0.0, 0.0], [45.0, 0.0, 0.0]], dtype=np.float32)
    log_p = torch.log_softmax(torch.from_numpy(confident), dim=1)[:, 0]
    assert log_p[0].item() == log_p[1].item() == 0.0  # float32 ties the two rows
    margins = logit_margin(confident, np.array([0, 0]))
    np.testing.assert_allclose(margins, [40.0 - math.log(2.0), 45.0 - math.log(2.0)], rtol=1e-12)


def test_probability_margin_is_log_odds_and_clipped():
    probs = np.array([[0.8, 0.2], [0.1, 0.9], [1.0, 0.0], [0.0, 1.0]])
    got = probability_margin(probs, np.array([0, 0, 0, 0]))
    np.testing.assert_allclose(got[:2], [math.log(0.8 / 0.2), math.log(0.1 / 0.9)], rtol=1e-12)
    assert np.isfinite(got).all()
    assert got[2] == pytest.approx(53 * math.log(2.0))  # p = 1 - 2**-53
    assert got[3] == pytest.approx(math.log(1e-300))


# --- LiRA ----------------------------------------------------------------------------


def test_lira_scores_by_hand():
    target = np.array([3.0, 4.0])
    references = np.array([[0.0, 2.0], [4.0, 8.0]])
    # Per-record: means 1 and 6, stds 1 and 2.
    np.testing.assert_allclose(
        lira_offline_scores(target=target, references=references, fixed_variance=False), [2.0, -1.0]
    )
    # Global: std of {0, 2, 4, 8} = sqrt(35 / 4).
    np.testing.assert_allclose(
        lira_offline_scores(target=target, references=references), np.array([2.0, -2.0]) / math.sqrt(8.75)
    )


N_SHARDS, N_TRAIN, N_HOLDOUT, N_FEATURES, N_CLASSES = 4, 200, 200, 20, 3


def _memorise(x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
    """A small MLP trained until it fits random labels: a deliberately overfit model."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, N_CLASSES)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimiser.step()
    return model


def _margins(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return logit_margin(model(torch.from_numpy(x)).numpy(), y)


@pytest.fixture(scope="module")
def noise_task():
    """Pure-noise labels split into 4 disjoint shards, one memorising MLP each, plus a
    model trained on unrelated records; margins of every model on every record."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_TRAIN + N_HOLDOUT, N_FEATURES)).astype(np.float32)
    y = rng.integers(0, N_CLASSES, size=N_TRAIN + N_HOLDOUT)
    member_of = rng.permutation(np.arange(N_TRAIN) % N_SHARDS)
    x_train, y_train, x_hold, y_hold = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    shards = [_memorise(x_train[member_of == k], y_train[member_of == k], seed=k) for k in range(N_SHARDS)]
    unrelated = _memorise(
        rng.normal(size=(50, N_FEATURES)).astype(np.float32), rng.integers(0, N_CLASSES, size=50), seed=99
    )
    return {
        "member_of": member_of,
        "train": np.column_stack([_margins(m, x_train, y_train) for m in shards]),
        "holdout": np.column_stack([_margins(m, x_hold, y_hold) for m in shards]),
        "unrelated_train": _margins(unrelated, x_train, y_train),
        "unrelated_holdout": _margins(unrelated, x_hold, y_hold),
    }


def test_shard_lira_detects_members_of_overfit_shards(noise_task):
    results = shard_lira(
        margins=noise_task["train"],
        member_of=noise_task["member_of"],
        holdout_margins=noise_task["holdout"],
        n_bootstrap=20,
    )
    assert [r.attack for r in results] == [f"lira-offline/shard-{k}" for k in range(N_SHARDS)]
    for k, result in enumerate(results):
        assert result.n_members == np.sum(noise_task["member_of"] == k)
        assert result.n_nonmembers == N_HOLDOUT
        assert result.auc > 0.75, result
        assert any("3 OUT reference" in note for note in result.notes)
        assert result.fpr[0] == result.tpr[0] == 0.0 and result.fpr[-1] == result.tpr[-1] == 1.0


def test_shard_lira_is_at_chance_when_the_target_never_saw_the_records(noise_task):
    aucs = []
    for k in range(N_SHARDS):
        train, holdout = noise_task["train"].copy(), noise_task["holdout"].copy()
        train[:, k], holdout[:, k] = noise_task["unrelated_train"], noise_task["unrelated_holdout"]
        results = shard_lira(margins=train, member_of=noise_task["member_of"], holdout_margins=holdout, n_bootstrap=1)
        aucs.append(results[k].auc)
    assert 0.4 < np.mean(aucs) < 0.6, aucs


def test_shard_rmia_detects_members_of_overfit_shards(noise_task):
    results = shard_attacks(margins=noise_task["train"], member_of=noise_task["member_of"],
                            holdout_margins=noise_task["holdout"], rmia=True, n_bootstrap=20)
    assert [r.attack for r in results] == ([f"lira-offline/shard-{k}" for k in range(N_SHARDS)]
                                           + [f"rmia-offline/shard-{k}" for k in range(N_SHARDS)])
    for k, result in enumerate(results[N_SHARDS:]):
        assert result.n_members == np.sum(noise_task["member_of"] == k) and result.n_nonmembers == N_HOLDOUT
        assert result.auc > 0.75, result
    lira_only = shard_attacks(margins=noise_task["train"], member_of=noise_task["member_of"],
                              holdout_margins=noise_task["holdout"], n_bootstrap=20)
    assert [r.to_json() for r in lira_only] == [r.to_json() for r in results[:N_SHARDS]]  # LiRA is unchanged


def test_shard_rmia_is_at_chance_when_the_target_never_saw_the_records(noise_task):
    aucs = []
    for k in range(N_SHARDS):
        train, holdout = noise_task["train"].copy(), noise_task["holdout"].copy()
        train[:, k], holdout[:, k] = noise_task["unrelated_train"], noise_task["unrelated_holdout"]
        results = shard_attacks(margins=train, member_of=noise_task["member_of"], holdout_margins=holdout,
                                rmia=True, n_bootstrap=1)
        aucs.append(results[N_SHARDS + k].auc)
    assert 0.4 < np.mean(aucs) < 0.6, aucs


def test_rmia_pairwise_test_by_hand():
    """The paper's score: the share of population records z with LR(x, z) > gamma, where
    LR(x, z) = (Pr(x|θ)/Pr(x)) / (Pr(z|θ)/Pr(z)) and Pr(x) = ((1+a)·mean_OUT + 1−a)/2."""
    rng = np.random.default_rng(4)
    p_target, p_refs = rng.uniform(0.05, 1, 30), rng.uniform(0.05, 1, (30, 3))
    z_target, z_refs = rng.uniform(0.05, 1, 50), rng.uniform(0.05, 1, (50, 3))
    a, gamma = 0.3, 1.5

    def px(refs):
        return ((1 + a) * refs.mean(axis=1) + 1 - a) / 2

    lr = (p_target / px(p_refs))[:, None] / (z_target / px(z_refs))[None, :]
    by_hand = (lr > gamma).mean(axis=1)
    got = rmia_offline_scores(target_log_prob=np.log(p_target), reference_log_probs=np.log(p_refs),
                              population=(np.log(z_target), np.log(z_refs)), gamma=gamma, offline_a=a)
    np.testing.assert_allclose(got, by_hand, atol=1e-12)
    ratio = rmia_offline_scores(target_log_prob=np.log(p_target), reference_log_probs=np.log(p_refs), offline_a=a)
    np.testing.assert_allclose(ratio, np.log(p_target / px(p_refs)), rtol=1e-12)
    order = np.argsort(ratio)  # the share of z beaten only grows with the ratio: the same ranking
    assert (np.diff(got[order]) >= 0).all()


def test_true_label_log_prob_is_log_softmax_without_saturation():
    logits = np.array([[2.0, -1.0, 0.5], [40.0, 0.0, 0.0]])
    y = np.array([2, 0])
    got = true_label_log_prob(logits, y)
    assert got[0] == pytest.approx(torch.log_softmax(torch.tensor(logits[0]), 0)[2].item(), rel=1e-12)
    assert got[1] == pytest.approx(-math.log1p(2 * math.exp(-40)), rel=1e-12)  # log_softmax rounds it to 0


def test_gates_read_the_worst_of_every_attack():
    from oblivio.audit.membership import summarise

    rng = np.random.default_rng(2)
    neg = rng.normal(0, 1, 300)
    weak = evaluate_attack(attack="population/ensemble", member_scores=rng.normal(0.05, 1, 200),
                           nonmember_scores=neg, n_bootstrap=5)
    lira = evaluate_attack(attack="lira-offline/shard-0", member_scores=rng.normal(0.3, 1, 200),
                           nonmember_scores=neg, n_bootstrap=5)
    rmia = evaluate_attack(attack="rmia-offline/shard-0", member_scores=rng.normal(1.5, 1, 200),
                           nonmember_scores=neg, n_bootstrap=5)
    summary = summarise(weak, [lira, rmia])
    assert summary["worst_attack"] == "rmia-offline/shard-0"
    assert summary["max_auc"] == rmia.auc > lira.auc
    assert summary["max_tpr_at_1pct_fpr"] == max(r.tpr_at_1pct_fpr for r in (weak, lira, rmia))
    assert [s["attack"] for s in summary["shards"]] == ["lira-offline/shard-0"]
    assert [s["attack"] for s in summary["rmia_shards"]] == ["rmia-offline/shard-0"]


# --- evaluation, reporting, plotting -------------------------------------------------


def test_bootstrap_intervals_contain_point_estimates_and_notes_warn_on_small_samples():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.normal(1.0, 1.0, size=300), rng.normal(0.0, 1.0, size=500)
    result = evaluate_attack(
        attack="population/ensemble", member_scores=members, nonmember_scores=nonmembers, notes=("given",)
    )
    assert set(result.intervals) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        interval, point = result.intervals[name], getattr(result, name)
        assert interval.low <= point <= interval.high, (name, interval, point)
    assert result.intervals["auc"].high - result.intervals["auc"].low > 0.01
    assert result.notes[0] == "given"
    assert any("0.1%" in note and "fewer than one false positive" in note for note in result.notes)
    assert not any("TPR@1%" in note for note in result.notes)  # 500 non-members afford 5 at 1%

    again = evaluate_attack(attack="population/ensemble", member_scores=members, nonmember_scores=nonmembers)
    assert again.intervals == result.intervals  # seeded

    large = evaluate_attack(
        attack="x", member_scores=members, nonmember_scores=rng.normal(size=1000), n_bootstrap=5
    )
    assert not any("0.1%" in note for note in large.notes)

    payload = json.loads(json.dumps(result.to_json()))
    assert payload["auc"] == result.auc and payload["intervals"]["auc"]["low"] == result.intervals["auc"].low
    assert "fpr" not in payload


def test_plot_roc_writes_an_svg_with_every_curve_on_both_panels(tmp_path):
    import xml.etree.ElementTree as ET

    rng = np.random.default_rng(4)
    curves = []
    for name, shift in (("strong", 2.0), ("weak <0.2>", 0.2)):
        fpr, tpr = roc_curve(member_scores=rng.normal(shift, 1, 400), nonmember_scores=rng.normal(0, 1, 400))
        curves.append((name, fpr, tpr))
    out = plot_roc(curves, tmp_path / "plots" / "roc.svg")
    root = ET.parse(out).getroot()  # well-formed XML, names escaped
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 2 * (len(curves) + 1)  # each curve and the chance line, on both panels
    texts = {t.text for t in root.findall(f"{ns}text")}
    assert {"strong", "weak <0.2>", "ROC (linear)", "ROC (log-log)"} <= texts
    # the strong attack's curve lies above the weak one's at FPR 0.1 on the linear panel
    from oblivio.audit.roc_plot import _step

    assert _step(curves[0][1], curves[0][2], np.array([0.1]))[0] > _step(curves[1][1], curves[1][2], np.array([0.1]))[0]


def test_mismatched_shapes_are_rejected_with_both_shapes_named():
    with pytest.raises(ValueError, match=r"target \(5,\) and references \(4, 3\)"):
        lira_offline_scores(target=np.zeros(5), references=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="K >= 1"):
        lira_offline_scores(target=np.zeros(4), references=np.zeros((4, 0)))
    with pytest.raises(ValueError, match=r"logits \(3, 2\).*got shape \(4,\)"):
        logit_margin(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"margins \(6, 3\).*got shape \(5,\)"):
        shard_lira(margins=np.zeros((6, 3)), member_of=np.zeros(5, dtype=int), holdout_margins=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(n_holdout, 3\).*got \(2, 4\)"):
        shard_lira(margins=np.zeros((6, 3)), member_of=np.zeros(6, dtype=int), holdout_margins=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"S >= 2"):
        shard_lira(margins=np.zeros((6, 1)), member_of=np.zeros(6, dtype=int), holdout_margins=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"\(3,\) and \(4,\)"):
        tpr_at_fpr(np.zeros(3), np.zeros(4), 0.01)


def test_fast_bootstrap_equals_sorting_every_resample():
    """The counting bootstrap must give exactly the intervals of re-sorting each resample."""
    from oblivio.audit import mia

    rng = np.random.default_rng(3)
    pos, neg = np.round(rng.normal(0.3, 1, 400), 1), np.round(rng.normal(0, 1, 1500), 1)  # many ties
    replay = np.random.default_rng(11)
    draws = {name: [] for name in mia.METRIC_NAMES}
    for _ in range(60):
        p, q = pos[replay.integers(0, pos.size, pos.size)], neg[replay.integers(0, neg.size, neg.size)]
        for name, value in mia._metrics(p, q)[0].items():
            draws[name].append(value)
    fast = mia._bootstrap_intervals(pos, neg, n_bootstrap=60, seed=11)
    for name, values in draws.items():
        assert fast[name].low == pytest.approx(np.percentile(values, 2.5), abs=1e-12)
        assert fast[name].high == pytest.approx(np.percentile(values, 97.5), abs=1e-12)


def test_grouped_bootstrap_resamples_whole_people():
    """With member groups, a replicate is whole people drawn with replacement: the same
    intervals as building each resample by hand, and wider than treating rows as independent
    when a person's rows move together."""
    from oblivio.audit import mia

    rng = np.random.default_rng(5)
    person_effect = rng.normal(0, 1, 8)
    groups = np.repeat(np.arange(8), 25)
    pos = np.round(person_effect[groups] + rng.normal(0, 0.1, groups.size), 2)
    neg = np.round(rng.normal(0, 1, 600), 2)
    replay = np.random.default_rng(7)
    draws = {name: [] for name in mia.METRIC_NAMES}
    for _ in range(40):
        people = replay.integers(0, 8, 8)
        p = np.concatenate([pos[groups == g] for g in people])
        q = neg[replay.integers(0, neg.size, neg.size)]
        for name, value in mia._metrics(p, q)[0].items():
            draws[name].append(value)
    grouped = mia._bootstrap_intervals(pos, neg, n_bootstrap=40, seed=7, member_groups=groups)
    for name, values in draws.items():
        assert grouped[name].low == pytest.approx(np.percentile(values, 2.5), abs=1e-12)
        assert grouped[name].high == pytest.approx(np.percentile(values, 97.5), abs=1e-12)
    by_row = mia._bootstrap_intervals(pos, neg, n_bootstrap=40, seed=7)
    assert grouped["auc"].high - grouped["auc"].low > 2 * (by_row["auc"].high - by_row["auc"].low)


def test_shard_attacks_of_one_size_share_draws_without_changing_intervals():
    """Shards with as many members draw their resamples once; each shard's intervals must be
    those of bootstrapping it alone, and a shard of another size must get its own draws."""
    from oblivio.audit import mia

    rng = np.random.default_rng(8)
    owner = np.r_[np.repeat([0, 1, 2], 120), np.full(90, 3)]  # three shards of 120 members, one of 90
    train, holdout = np.round(rng.normal(0, 1, (owner.size, 4)), 2), np.round(rng.normal(0, 1, (400, 4)), 2)
    train[np.arange(owner.size), owner] += 0.5  # each shard model fits its own members a little
    results = shard_lira(margins=train, member_of=owner, holdout_margins=holdout, n_bootstrap=30, seed=5)
    for k, result in enumerate(results):
        both = np.concatenate([train[owner == k], holdout])
        scores = lira_offline_scores(target=both[:, k], references=np.delete(both, k, axis=1))
        alone = mia._bootstrap_intervals(scores[: result.n_members], scores[result.n_members :], n_bootstrap=30, seed=5)
        assert result.intervals == alone
    assert len({r.intervals["auc"] for r in results}) == 4


def test_shard_attacks_give_the_same_results_on_worker_processes():
    """Bootstraps handed to an executor (serve's idle training workers) must not change a number."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    rng = np.random.default_rng(9)
    owner = np.r_[np.repeat([0, 1, 2], 80), np.full(60, 3)]  # two sizes: two bootstrap jobs
    train, holdout = rng.normal(0, 1, (owner.size, 4)), rng.normal(0, 1, (300, 4))
    train[np.arange(owner.size), owner] += 0.4
    args = {"margins": train, "member_of": owner, "holdout_margins": holdout, "rmia": True, "n_bootstrap": 25,
            "seed": 3}
    here = shard_attacks(**args)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as workers:
        there = shard_attacks(**args, executor=workers)
    assert [r.to_json() for r in there] == [r.to_json() for r in here]
    assert len({r.intervals["auc"] for r in here}) == len(here)
