"""A lower bound on ε from one training run (Steinke, Nasr, Jagielski 2023, "Privacy
auditing with one (1) training run", NeurIPS).

m canaries are each included in training independently with probability 1/2. An auditor
scores them, guesses "in" for the k+ highest scores and "out" for the k− lowest, and
abstains on the rest. If training is (ε, δ)-DP, the number V of correct guesses out of
r = k+ + k− guesses satisfies (the paper's main theorem, with its extension to δ > 0)

    P[V >= v] <= P[Binomial(r, e^ε / (1 + e^ε)) >= v] + 2 m δ · max_{i=1..v} P[v > Binomial(r, q) >= v − i] / i.

An ε whose right-hand side is below α is rejected at confidence 1 − α; the largest rejected
ε is the bound. Pure functions over numbers; scipy supplies the binomial.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Shares of the m canaries guessed on (half "in" from the top, half "out" from the bottom).
# Several are tried, so each is tested at α / len (Bonferroni): the bound stays valid.
GUESS_SHARES = (0.05, 0.1, 0.2, 0.5, 1.0)


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct of r guesses] under (ε, δ)-DP with m canaries: the theorem's bound."""
    from scipy.stats import binom

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m; got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1]; got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # the accuracy of ε-DP randomised response
    beta = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if v == 0 or delta == 0:
        return min(beta, 1.0)
    below = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))  # max_i P[v > B >= v-i] / i
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, alpha: float = 0.05,
                        tolerance: float = 1e-6) -> float:
    """The largest ε that v correct of r guesses reject at level α (0 when none is rejected)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")

    def rejected(eps: float) -> bool:
        return p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) < alpha

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):  # the p-value grows with ε: find an ε that is not rejected
        low, high = high, 2 * high
        if high > 1e3:
            return low
    while high - low > tolerance:
        mid = (low + high) / 2
        low, high = (mid, high) if rejected(mid) else (low, mid)
    return low


@dataclass(frozen=True)
class OneRunAudit:
    """The best bound over the guess counts tried, and what it rests on."""

    epsilon_lower: float  # ε̂: training was not (ε, δ)-DP for any smaller ε, at the confidence below
    delta: float
    confidence: float  # 1 − α over all guess counts tried together (Bonferroni)
    m: int  # canaries
    included: int  # canaries that were trained on
    guesses: int  # r of the best bound
    correct: int  # v of the best bound
    tried: tuple[tuple[int, int, float], ...]  # (r, v, ε̂) for every guess count

    def to_json(self) -> dict:
        return {"epsilon_lower": self.epsilon_lower, "delta": self.delta, "confidence": self.confidence,
                "canaries": self.m, "included": self.included, "guesses": self.guesses, "correct": self.correct,
                "tried": [list(t) for t in self.tried]}


def audit_scores(scores: np.ndarray, included: np.ndarray, *, delta: float, confidence: float = 0.95,
                 shares: Sequence[float] = GUESS_SHARES) -> OneRunAudit:
    """ε̂ from membership scores of canaries (higher = more member-like) and who was included."""
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.ndim != 1 or s.shape != inc.shape or s.size < 2:
        raise ValueError(f"need one score and one inclusion bit per canary (>= 2); got {s.shape} and {inc.shape}")
    if not np.isfinite(s).all():
        raise ValueError("canary scores must be finite")
    m = s.size
    alpha = (1.0 - confidence) / len(shares)
    order = np.argsort(-s, kind="stable")  # most member-like first
    tried = []
    for share in shares:
        r = min(m, max(2, round(share * m)))
        k_in = r // 2
        v = int(inc[order[:k_in]].sum() + (~inc[order[m - (r - k_in):]]).sum())
        tried.append((r, v, epsilon_lower_bound(m=m, r=r, v=v, delta=delta, alpha=alpha)))
    r, v, eps = max(tried, key=lambda t: t[2])
    return OneRunAudit(epsilon_lower=eps, delta=delta, confidence=confidence, m=m, included=int(inc.sum()),
                       guesses=r, correct=v, tried=tuple(tried))
