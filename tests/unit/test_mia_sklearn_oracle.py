"""The hand-written ROC, AUC, TPR@FPR, balanced accuracy and bootstrap against scikit-learn.

mia.py computes its metrics by hand (the bootstrap by counting, not sorting) because the
audit runs after every erasure; scikit-learn's `roc_auc_score`, `roc_curve` and
`balanced_accuracy_score` are the independent oracles here, on data with many ties.
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from oblivio.audit import mia


def tied_scores(seed: int, shift: float = 0.4, n_pos: int = 300, n_neg: int = 1200):
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(shift, 1, n_pos), 1), np.round(rng.normal(0, 1, n_neg), 1)


def labelled(pos, neg):
    return np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]


def sklearn_metrics(pos, neg) -> dict[str, float]:
    y, s = labelled(pos, neg)
    fpr, tpr, thresholds = sk_roc_curve(y, s, drop_intermediate=False)
    return {
        "auc": roc_auc_score(y, s),
        "tpr_at_0_1pct_fpr": float(tpr[fpr <= 1e-3].max()),
        "tpr_at_1pct_fpr": float(tpr[fpr <= 1e-2].max()),
        "balanced_accuracy": max([0.5] + [balanced_accuracy_score(y, s >= t) for t in thresholds[1:]]),
    }


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_and_low_fpr_points_match_sklearn(seed):
    pos, neg = tied_scores(seed, shift=0.2 * seed)
    y, s = labelled(pos, neg)
    fpr, tpr = mia.roc_curve(member_scores=pos, nonmember_scores=neg)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
    assert mia.auc_from_scores(member_scores=pos, nonmember_scores=neg) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    result = mia.evaluate_attack(attack="t", member_scores=pos, nonmember_scores=neg, n_bootstrap=1)
    for name, value in sklearn_metrics(pos, neg).items():
        assert getattr(result, name) == pytest.approx(value, abs=1e-12), name


def test_bootstrap_intervals_match_sklearn_on_the_same_resamples():
    """Each replicate redrawn from Generator(seed) as documented (members, then non-members),
    its metrics computed by scikit-learn: the same percentile intervals."""
    pos, neg = tied_scores(7, n_pos=150, n_neg=1100)
    replay = np.random.default_rng(13)
    draws = {name: [] for name in mia.METRIC_NAMES}
    for _ in range(40):
        p, q = pos[replay.integers(0, pos.size, pos.size)], neg[replay.integers(0, neg.size, neg.size)]
        for name, value in sklearn_metrics(p, q).items():
            draws[name].append(value)
    result = mia.evaluate_attack(attack="t", member_scores=pos, nonmember_scores=neg, n_bootstrap=40, seed=13)
    for name, values in draws.items():
        assert result.intervals[name].low == pytest.approx(np.percentile(values, 2.5), abs=1e-12), name
        assert result.intervals[name].high == pytest.approx(np.percentile(values, 97.5), abs=1e-12), name


def test_shard_attack_metrics_match_sklearn():
    """LiRA and RMIA scores of every shard, scored by scikit-learn, give the reported figures."""
    rng = np.random.default_rng(9)
    owner = np.repeat(np.arange(3), 200)
    train, holdout = rng.normal(0, 1, (owner.size, 3)), rng.normal(0, 1, (500, 3))
    train[np.arange(owner.size), owner] += 0.7
    results = mia.shard_attacks(margins=train, member_of=owner, holdout_margins=holdout, rmia=True, n_bootstrap=1)
    for result in results:
        kind, k = result.attack.split("-offline/shard-")
        k = int(k)
        both = np.concatenate([train[owner == k], holdout])
        if kind == "lira":
            scores = mia.lira_offline_scores(target=both[:, k], references=np.delete(both, k, axis=1))
        else:
            lp = -np.logaddexp(0, -both)
            scores = mia.rmia_offline_scores(target_log_prob=lp[:, k], reference_log_probs=np.delete(lp, k, axis=1))
        expected = sklearn_metrics(scores[:200], scores[200:])
        for name, value in expected.items():
            assert getattr(result, name) == pytest.approx(value, abs=1e-12), (result.attack, name)
