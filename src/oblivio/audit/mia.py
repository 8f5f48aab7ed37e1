"""Membership-inference attacks (MIA) on SISA ensembles and the metrics that report them.

Two attacks are measured:

* Offline LiRA per shard (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles", offline variant). In a SISA ensemble every training record is in exactly
  one shard, so the other S-1 shard models never saw it: they are OUT reference models
  for free, with no shadow training. Held-out records (split by person) are OUT for every
  shard. `shard_lira` audits each shard model this way.
* Offline RMIA per shard (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference
  Attacks"), on the same free OUT references: the likelihood ratio Pr(x|θ) / Pr(x) of the
  record's true-label probability under the audited model against its population
  probability, estimated offline from the OUT models as ((1+a)·mean_OUT + (1−a)) / 2.
  `shard_attacks` audits each shard model with both; the gates take the worst.
* A population (loss-threshold) attack on the aggregated ensemble: the score is
  `probability_margin` of the averaged probabilities, which ranks records exactly as
  the negated cross-entropy loss does. Pass those scores to `evaluate_attack` with
  `attack="population/ensemble"`.

Scores are "higher = more member-like" throughout. Metrics follow the paper's advice to
report TPR at low FPR next to AUC, with bootstrap intervals and plain-language notes when
the sample is too small for a figure to mean what its name says.

Everything here is a pure function over numpy arrays; the plot is in `roc_plot`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

# Per-example reference std never drops below this (in logit units), so the LiRA score
# stays finite when K = 1 or when the OUT models agree exactly; independently trained
# models disagree by far more than this.
STD_FLOOR = 1e-3

# With fewer OUT references than this, the per-record Gaussian is poorly estimated and
# low-FPR figures are noisy (the paper's offline results use 16 or more).
FEW_REFERENCES = 16

# RMIA's offline parameter a: how far an IN model's probability would sit above the OUT mean
# (Pr(x) ≈ ((1+a)·Pr_OUT(x) + 1 − a) / 2); 0.3 is the paper's and Privacy Meter's default.
RMIA_OFFLINE_A = 0.3

# Probability clip for `probability_margin`: log(0) and log(1 - 1) are infinite.
# 1 - 1e-16 rounds to the largest double below 1 (1 - 2**-53), so the margin is capped
# at about 36.7; 1e-300 floors it at about -690.8.
PROB_LOW = 1e-300
PROB_HIGH = 1.0 - 1e-16

METRIC_NAMES = ("auc", "tpr_at_0_1pct_fpr", "tpr_at_1pct_fpr", "balanced_accuracy")


@dataclass(frozen=True)
class Interval:
    """A two-sided 95% bootstrap percentile interval."""

    low: float  # 2.5th percentile of the bootstrap distribution
    high: float  # 97.5th percentile of the bootstrap distribution


@dataclass(frozen=True)
class AttackResult:
    """How well one attack tells members from non-members, with its uncertainty."""

    attack: str  # what was attacked and how, e.g. "lira-offline/shard-3", "population/ensemble"
    auc: float  # area under the ROC curve; 0.5 = chance
    tpr_at_0_1pct_fpr: float  # highest TPR with FPR <= 0.001
    tpr_at_1pct_fpr: float  # highest TPR with FPR <= 0.01
    balanced_accuracy: float  # max over thresholds of (TPR + TNR) / 2
    n_members: int  # member scores evaluated
    n_nonmembers: int  # non-member scores evaluated
    intervals: dict[str, Interval]  # 95% bootstrap interval for each name in METRIC_NAMES; {} when not drawn
    notes: tuple[str, ...]  # caveats a reader needs to interpret the figures
    fpr: np.ndarray = field(repr=False, compare=False)  # ROC curve x, for plot_roc; not in to_json
    tpr: np.ndarray = field(repr=False, compare=False)  # ROC curve y, for plot_roc; not in to_json

    def to_json(self) -> dict:
        """The result as plain JSON types (the ROC curve is left out: it is for plots)."""
        return {
            "attack": self.attack,
            **{name: float(getattr(self, name)) for name in METRIC_NAMES},
            "n_members": int(self.n_members),
            "n_nonmembers": int(self.n_nonmembers),
            "intervals": {
                name: {"low": float(iv.low), "high": float(iv.high)}
                for name, iv in self.intervals.items()
            },
            "notes": list(self.notes),
        }


# --- per-record statistics -------------------------------------------------------------


def logit_margin(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, z_y - logsumexp(z_j for j != y), in float64.

    This is log(p_y / (1 - p_y)), the statistic LiRA fits Gaussians to. It is computed
    from logits in float64 because float32 log-probabilities of an overfit model
    saturate to exactly 0: very confident members then tie, and ties zero out TPR at
    low FPR. Works for any number of classes C >= 2.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (n, C) with C >= 2 classes; got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    y = _labels(labels, rows_of=z.shape, n_classes=z.shape[1], name="logits")
    rows = np.arange(z.shape[0])
    others = z.copy()
    others[rows, y] = -np.inf
    top = others.max(axis=1)
    lse_others = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
    return z[rows, y] - lse_others


def probability_margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, log(p_y) - log(1 - p_y) in float64, for an averaged-probability ensemble.

    The ensemble only exposes averaged probabilities, not logits, so the margin is taken
    from p_y. p_y is clipped to [1e-300, 1 - 1e-16] so exact 0 and 1 (underflow in the
    members' softmax, or rounding in the average) give finite margins; the clip caps
    the margin at about 36.7 and floors it at about -690.8. Records beyond the cap tie,
    which is a limit of the input: average float64 softmaxes to keep the ties rare.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, C) with C >= 2 classes; got {p.shape}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probs must be finite probabilities in [0, 1]")
    y = _labels(labels, rows_of=p.shape, n_classes=p.shape[1], name="probs")
    p_y = np.clip(p[np.arange(p.shape[0]), y], PROB_LOW, PROB_HIGH)
    return np.log(p_y) - np.log1p(-p_y)


def lira_offline_scores(
    *, target: np.ndarray, references: np.ndarray, fixed_variance: bool = True
) -> np.ndarray:
    """Offline LiRA score per record: (target - mean_out) / std_out, higher = more member-like.

    target: (n,) margins of the audited model; references: (n, K) margins of K >= 1
    models known to be OUT for each record. Offline LiRA has no IN models, so it asks
    how far above the OUT distribution the target sits (a one-sided Gaussian test;
    this z-score ranks records as its likelihood ratio does).

    fixed_variance=True uses one std over all reference margins, as the paper does with
    few references: a per-record std from K values is too noisy (and 0 when K = 1).
    Scores are only comparable within one call, so score members and non-members
    together. fixed_variance=False uses each record's own std, floored at STD_FLOOR.
    """
    t = np.asarray(target, dtype=np.float64)
    r = np.asarray(references, dtype=np.float64)
    if t.ndim != 1 or r.ndim != 2 or r.shape[0] != t.shape[0] or t.shape[0] == 0:
        raise ValueError(
            "target must have shape (n,) and references (n, K) with n >= 1; "
            f"got target {t.shape} and references {r.shape}"
        )
    if r.shape[1] < 1:
        raise ValueError(f"need at least one OUT reference model (K >= 1); references has shape {r.shape}")
    if not (np.isfinite(t).all() and np.isfinite(r).all()):
        raise ValueError("target and references must be finite margins")
    mean_out = r.mean(axis=1)
    std_out = np.std(r) if fixed_variance else np.std(r, axis=1)
    return (t - mean_out) / np.maximum(std_out, STD_FLOOR)


def true_label_log_prob(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, log softmax(z)_y in float64 (exact near 0, where float32 gives 0)."""
    z = np.asarray(logits, dtype=np.float64)
    return -np.logaddexp(0.0, -logit_margin(z, labels))  # log p = -log(1 + e^-margin)


def rmia_offline_scores(*, target_log_prob: np.ndarray, reference_log_probs: np.ndarray,
                        offline_a: float = RMIA_OFFLINE_A,
                        population: tuple[np.ndarray, np.ndarray] | None = None, gamma: float = 1.0) -> np.ndarray:
    """Offline RMIA score per record, higher = more member-like.

    target_log_prob: (n,) log Pr(x|θ) of the audited model's true-label probability;
    reference_log_probs: (n, K) the same under K >= 1 models OUT for each record.
    Pr(x) is estimated offline as ((1+a)·mean_OUT + (1−a)) / 2 (the paper's linear
    approximation of the IN/OUT average when no IN model exists).

    With `population` (target and reference log-probabilities of population records z),
    the score is the paper's: the share of z with LR(x, z) = [Pr(x|θ)/Pr(x)] / [Pr(z|θ)/Pr(z)]
    above gamma. For a fixed population and gamma that share only grows with
    Pr(x|θ)/Pr(x), so without `population` the log of that ratio is returned: it ranks
    records the same way (every ROC figure is the ranking's), and a finite population
    cannot tie the most member-like records at share 1, which would flatten TPR at low FPR.
    """
    ratio = _rmia_log_ratio(target_log_prob, reference_log_probs, offline_a)
    if population is None:
        return ratio
    z_ratio = np.sort(_rmia_log_ratio(*population, offline_a))
    if z_ratio.size == 0:
        raise ValueError("the RMIA population must hold at least one record")
    # LR(x, z) > gamma  <=>  log ratio_z < log ratio_x - log gamma
    return np.searchsorted(z_ratio, ratio - math.log(gamma), side="left") / z_ratio.size


def _rmia_log_ratio(target: np.ndarray, references: np.ndarray, offline_a: float) -> np.ndarray:
    t = np.asarray(target, dtype=np.float64)
    r = np.asarray(references, dtype=np.float64)
    if t.ndim != 1 or r.ndim != 2 or r.shape[0] != t.shape[0] or r.shape[1] < 1:
        raise ValueError("target_log_prob must have shape (n,) and reference_log_probs (n, K) with K >= 1; "
                         f"got {t.shape} and {r.shape}")
    if not (np.isfinite(t).all() and np.isfinite(r).all() and (t <= 0).all() and (r <= 0).all()):
        raise ValueError("log-probabilities must be finite and <= 0")
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"offline_a must lie in [0, 1]; got {offline_a}")
    p_out = np.exp(r).mean(axis=1)
    log_px = np.log(((1.0 + offline_a) * p_out + (1.0 - offline_a)) / 2.0)
    return t - log_px


# --- metrics -------------------------------------------------------------------------


def roc_curve(*, member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) for "member if score >= threshold", over every distinct threshold.

    Starts at (0, 0) and ends at (1, 1). A threshold cannot split records with equal
    scores, so a tie block moves fpr and tpr together in one step (a diagonal segment),
    which is what makes the trapezoid area equal the tie-aware Mann-Whitney AUC.
    """
    return _roc(_scores("member_scores", member_scores), _scores("nonmember_scores", nonmember_scores))


def auc_from_scores(*, member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score) + P(equal) / 2, from ranks in O(n log n).

    This is the Mann-Whitney U statistic over n_members * n_nonmembers, and equals the
    trapezoid area under `roc_curve`.
    """
    return _mann_whitney_auc(
        _scores("member_scores", member_scores), _scores("nonmember_scores", nonmember_scores)
    )


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    """Highest TPR among ROC points with FPR <= target_fpr.

    0.0 when no point qualifies: rejecting every record always achieves TPR 0 at FPR 0.
    """
    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    if f.ndim != 1 or f.shape != t.shape or f.size == 0:
        raise ValueError(f"fpr and tpr must be non-empty 1-D arrays of one shape; got {f.shape} and {t.shape}")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must lie in [0, 1]; got {target_fpr}")
    allowed = f <= target_fpr
    return float(t[allowed].max()) if allowed.any() else 0.0


def evaluate_attack(
    *,
    attack: str,
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    n_bootstrap: int = 200,
    seed: int = 0,
    notes: Sequence[str] = (),
    member_groups: np.ndarray | None = None,
) -> AttackResult:
    """AUC, TPR at 0.1% and 1% FPR and balanced accuracy, with 95% bootstrap intervals.

    Each bootstrap replicate resamples members and non-members independently (with
    replacement, each group keeping its size) from numpy's Generator(seed); intervals
    are the 2.5th and 97.5th percentiles. `member_groups` (one label per member, e.g. a
    subject key) resamples members by group instead: one person's records are
    correlated, and resampling them as independent rows makes the interval too narrow.
    `notes` are kept, and notes about too few non-members for the low-FPR figures are added.
    `n_bootstrap` 0: the point figures alone (`intervals` empty), for intervals drawn later.
    """
    pos = _scores("member_scores", member_scores)
    neg = _scores("nonmember_scores", nonmember_scores)
    intervals = (_bootstrap_intervals(pos, neg, n_bootstrap=n_bootstrap, seed=seed, member_groups=member_groups)
                 if n_bootstrap else {})
    return _result(attack, pos, neg, intervals, notes)


def _result(attack: str, pos: np.ndarray, neg: np.ndarray, intervals: dict[str, Interval],
            notes: Sequence[str]) -> AttackResult:
    point, fpr, tpr = _metrics(pos, neg)
    return AttackResult(attack=attack, **point, n_members=pos.size, n_nonmembers=neg.size, intervals=intervals,
                        notes=tuple(notes) + _sample_size_notes(neg.size), fpr=fpr, tpr=tpr)


# --- SISA shards ---------------------------------------------------------------------


def shard_lira(*, margins: np.ndarray, member_of: np.ndarray, holdout_margins: np.ndarray,
               n_bootstrap: int = 200, seed: int = 0) -> list[AttackResult]:
    """Offline LiRA against each shard model (see `shard_attacks`), one result per shard."""
    return shard_attacks(margins=margins, member_of=member_of, holdout_margins=holdout_margins,
                         n_bootstrap=n_bootstrap, seed=seed)


def shard_attacks(
    *,
    margins: np.ndarray,
    member_of: np.ndarray,
    holdout_margins: np.ndarray,
    rmia: bool = False,
    n_bootstrap: int = 200,
    seed: int = 0,
    executor: Executor | None = None,
) -> list[AttackResult]:
    """Offline LiRA (and with `rmia`, offline RMIA) against each shard model of a SISA ensemble.

    margins: (n_train, S) logit margin of every shard model on every training record;
    member_of: (n_train,) the shard whose training set holds each record;
    holdout_margins: (n_holdout, S) margins on held-out records.

    For shard k, members are the training records with member_of == k and non-members
    are all held-out records. The target is column k; the references are the other S-1
    columns, which are OUT for members by construction and OUT for held-out records
    always. Results are named f"lira-offline/shard-{k}" (then f"rmia-offline/shard-{k}"),
    and carry their ROC curves (`fpr`, `tpr`) for `plot_roc`. RMIA reads the true-label
    probability, which is a function of the margin (log p = −log(1 + e^−margin)). Needs S >= 2.
    `executor` (e.g. the training workers, idle by now) computes the shards' bootstraps, one
    group of equal sizes each; the intervals do not depend on where they were computed.
    `n_bootstrap` 0: no intervals (see `evaluate_attack`).
    """
    train = np.asarray(margins, dtype=np.float64)
    holdout = np.asarray(holdout_margins, dtype=np.float64)
    if train.ndim != 2 or train.shape[1] < 2:
        raise ValueError(f"margins must have shape (n_train, S) with S >= 2 shards; got {train.shape}")
    n_shards = train.shape[1]
    if holdout.ndim != 2 or holdout.shape[1] != n_shards or holdout.shape[0] == 0:
        raise ValueError(
            f"holdout_margins must have shape (n_holdout, {n_shards}) with n_holdout >= 1 "
            f"to match margins {train.shape}; got {holdout.shape}"
        )
    if not (np.isfinite(train).all() and np.isfinite(holdout).all()):
        raise ValueError("margins must be finite")
    owner = _labels(member_of, rows_of=train.shape, n_classes=n_shards, name="margins")
    scored: list[tuple[str, np.ndarray, np.ndarray]] = []
    log_probs = {}
    for k in range(n_shards):
        members = train[owner == k]
        if members.shape[0] == 0:
            raise ValueError(f"shard {k} holds no training records in member_of; it cannot be audited")
        both = np.concatenate([members, holdout])
        scores = lira_offline_scores(target=both[:, k], references=np.delete(both, k, axis=1))
        scored.append((f"lira-offline/shard-{k}", scores[: members.shape[0]], scores[members.shape[0] :]))
        log_probs[k] = (members.shape[0], -np.logaddexp(0.0, -both))
    if rmia:
        for k, (n_members, lp) in log_probs.items():
            scores = rmia_offline_scores(target_log_prob=lp[:, k], reference_log_probs=np.delete(lp, k, axis=1))
            scored.append((f"rmia-offline/shard-{k}", scores[:n_members], scores[n_members:]))
    notes = _reference_notes(n_shards - 1)
    if not n_bootstrap:
        return [_result(name, pos, neg, {}, notes) for name, pos, neg in scored]
    # attacks with as many members draw the same resamples (same seed, same sizes): draw them once
    groups = [[i for i, (_, pos, _) in enumerate(scored) if pos.size == size]
              for size in sorted({pos.size for _, pos, _ in scored})]
    jobs = [[_Resampling.of(*scored[i][1:]) for i in same] for same in groups]
    shared = (executor or _InProcess()).map(partial(_shared_bootstrap, n_bootstrap=n_bootstrap, seed=seed), jobs)
    intervals = {i: found for same, group in zip(groups, shared) for i, found in zip(same, group)}
    return [_result(name, pos, neg, intervals[i], notes) for i, (name, pos, neg) in enumerate(scored)]


# --- helpers -------------------------------------------------------------------------


class _InProcess:
    """`Executor.map`'s shape, computed here, one after another."""

    @staticmethod
    def map(fn, items):
        return map(fn, items)


def _scores(name: str, values: np.ndarray) -> np.ndarray:
    """Attack scores as a non-empty 1-D float64 array without NaN (NaN cannot be ranked)."""
    s = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"{name} contains NaN")
    return s


def _labels(values: np.ndarray, *, rows_of: tuple[int, ...], n_classes: int, name: str) -> np.ndarray:
    """Integer indices in [0, n_classes), one per row of the array `name` of shape `rows_of`."""
    y = np.asarray(values)
    n_rows = rows_of[0]
    if y.shape != (n_rows,):
        raise ValueError(
            f"expected one index per row of {name} {rows_of}, i.e. shape ({n_rows},); got shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"indices must be integers; got dtype {y.dtype}")
    if n_rows and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"indices must lie in [0, {n_classes}); got values from {y.min()} to {y.max()}")
    return y


def _roc(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([pos, neg])
    is_member = np.concatenate([np.ones(pos.size, dtype=bool), np.zeros(neg.size, dtype=bool)])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    # One ROC point per tie block, at its last index.
    block_ends = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    true_pos = np.cumsum(is_member)[block_ends]
    false_pos = block_ends + 1 - true_pos
    return np.r_[0, false_pos] / neg.size, np.r_[0, true_pos] / pos.size


def _mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    _, inverse, counts = np.unique(np.concatenate([pos, neg]), return_inverse=True, return_counts=True)
    # 1-based rank shared by each tie block: the mean of the ranks it spans.
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0
    u = mid_ranks[inverse[: pos.size]].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _metrics(pos: np.ndarray, neg: np.ndarray) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The four reported metrics, plus the ROC curve they were read from."""
    fpr, tpr = _roc(pos, neg)
    metrics = {
        "auc": _mann_whitney_auc(pos, neg),
        "tpr_at_0_1pct_fpr": tpr_at_fpr(fpr, tpr, 1e-3),
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 1e-2),
        "balanced_accuracy": float(np.max((tpr + 1.0 - fpr) / 2.0)),
    }
    return metrics, fpr, tpr


@dataclass(frozen=True)
class _Resampling:
    """One attack's scores, reduced to what a bootstrap replicate needs.

    A resample is a multiset of the original scores, so it is described by how often each
    distinct score was drawn, and no replicate sorts anything. Every metric is read from
    the ROC points just after each distinct member score (plus the origin): between two of
    them only the FPR grows, so no other point can have a higher TPR at a given FPR or a
    higher balanced accuracy. A replicate then costs its draws plus work on the distinct
    member scores, not on all scores (the audit runs after every training and erasure).
    """

    n_pos: int
    n_neg: int
    pos_anchor: np.ndarray  # each member's distinct score (anchor), in descending order of scores
    neg_slot: np.ndarray  # 2j if a non-member scores above anchor j (below j-1), 2j+1 if it ties anchor j
    n_anchors: int
    group_of: np.ndarray | None  # each member's group, when whole groups are resampled
    n_groups: int

    @classmethod
    def of(cls, pos: np.ndarray, neg: np.ndarray, member_groups: np.ndarray | None = None) -> _Resampling:
        uniq, inverse = np.unique(np.concatenate([pos, neg]), return_inverse=True)
        block = uniq.size - 1 - inverse  # tie-block index in descending score order
        anchors, pos_anchor = np.unique(block[: pos.size], return_inverse=True)
        above = np.searchsorted(anchors, block[pos.size:])
        ties = anchors[np.minimum(above, anchors.size - 1)] == block[pos.size:]
        group_of, n_groups = None, 0
        if member_groups is not None:
            _, group_of = np.unique(np.asarray(member_groups), return_inverse=True)
            n_groups = int(group_of.max()) + 1
        return cls(n_pos=pos.size, n_neg=neg.size, pos_anchor=pos_anchor, neg_slot=2 * above + ties,
                   n_anchors=anchors.size, group_of=group_of, n_groups=n_groups)

    def draw_members(self, rng: np.random.Generator) -> np.ndarray:
        """Member rows drawn, or with groups how often each group was drawn."""
        if self.group_of is None:
            return rng.integers(0, self.n_pos, self.n_pos)
        return np.bincount(rng.integers(0, self.n_groups, self.n_groups), minlength=self.n_groups)

    def member_weights(self, drawn: np.ndarray) -> np.ndarray:
        """How often each anchor's members are in the resample."""
        if self.group_of is None:
            return np.bincount(self.pos_anchor[drawn], minlength=self.n_anchors)
        return np.bincount(self.pos_anchor, weights=drawn[self.group_of], minlength=self.n_anchors)

    def replicate(self, members: np.ndarray, nonmembers: np.ndarray) -> dict[str, float]:
        """The four metrics of the resample made of these draws (`draw_members`, non-member rows)."""
        pos_w = self.member_weights(members)
        slots = np.bincount(self.neg_slot[nonmembers], minlength=2 * self.n_anchors + 1)
        tied_w = slots[1::2]
        false_pos = np.cumsum(slots[0:-1:2] + tied_w)  # non-members scoring at or above each anchor
        n_pos, n_neg = pos_w.sum(), self.n_neg
        fpr = np.concatenate([[0], false_pos]) / n_neg
        tpr = np.concatenate([[0], np.cumsum(pos_w)]) / n_pos
        # both only grow, so the best TPR within an FPR is at the last point allowed
        within_0_1pct, within_1pct = np.searchsorted(fpr, [1e-3, 1e-2], side="right") - 1
        return {
            # a product and a sum, not np.dot: BLAS wakes its thread pool for each call (~5 ms a replicate here)
            "auc": float((pos_w * (n_neg - false_pos + 0.5 * tied_w)).sum() / (n_pos * n_neg)),
            "tpr_at_0_1pct_fpr": float(tpr[within_0_1pct]),
            "tpr_at_1pct_fpr": float(tpr[within_1pct]),
            "balanced_accuracy": float(np.max((tpr + 1.0 - fpr) / 2.0)),
        }


def _bootstrap_intervals(pos: np.ndarray, neg: np.ndarray, *, n_bootstrap: int, seed: int,
                         member_groups: np.ndarray | None = None) -> dict[str, Interval]:
    """Percentile intervals from resampling members and non-members independently.

    With `member_groups`, a replicate draws groups and takes every member of each group drawn.
    """
    [intervals] = _shared_bootstrap([_Resampling.of(pos, neg, member_groups)], n_bootstrap=n_bootstrap, seed=seed)
    return intervals


def _shared_bootstrap(attacks: list[_Resampling], *, n_bootstrap: int, seed: int) -> list[dict[str, Interval]]:
    """Each attack's intervals, as `_bootstrap_intervals` gives them, from one set of draws.

    The draws depend only on the seed and the sample sizes, so attacks of one size (the
    shard attacks) resample the same rows: drawing once for all is the same as drawing
    for each. Each replicate draws members, then non-members, from Generator(seed).
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1; got {n_bootstrap}")
    first = attacks[0]
    if any((a.n_pos, a.n_neg, a.group_of is None) != (first.n_pos, first.n_neg, True) for a in attacks[1:]):
        raise ValueError("attacks share draws only with equal sample sizes and no member groups")
    rng = np.random.default_rng(seed)
    draws = [{name: np.empty(n_bootstrap) for name in METRIC_NAMES} for _ in attacks]
    for b in range(n_bootstrap):
        members, nonmembers = first.draw_members(rng), rng.integers(0, first.n_neg, first.n_neg)
        for attack, out in zip(attacks, draws):
            for name, value in attack.replicate(members, nonmembers).items():
                out[name][b] = value
    return [{name: Interval(low=float(np.percentile(v, 2.5)), high=float(np.percentile(v, 97.5)))
             for name, v in out.items()} for out in draws]


def _sample_size_notes(n_nonmembers: int) -> tuple[str, ...]:
    """Warn where a TPR@FPR figure cannot afford even one false positive."""
    notes = []
    for target, label in ((1e-3, "0.1%"), (1e-2, "1%")):
        needed = math.ceil(1.0 / target)
        if n_nonmembers < needed:
            notes.append(
                f"TPR@{label} FPR rests on fewer than one false positive: with {n_nonmembers} "
                f"non-members (< {needed}) it is the TPR at zero false positives, so it is "
                "noisy and not comparable with figures from larger audits."
            )
    return tuple(notes)


def _reference_notes(n_references: int) -> tuple[str, ...]:
    if n_references >= FEW_REFERENCES:
        return ()
    return (
        f"LiRA and RMIA used {n_references} OUT reference model(s) per record (< {FEW_REFERENCES}): "
        "the OUT distribution is poorly estimated, so low-FPR figures are noisy.",
    )
