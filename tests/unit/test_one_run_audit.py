"""The one-run ε lower bound (Steinke, Nasr, Jagielski 2023): exact where the theorem has a
closed form, valid (never above the true ε more often than α) and powerful on a mechanism
whose ε is known exactly (randomised response)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binom

from oblivio.audit.one_run import audit_scores, epsilon_lower_bound, p_value


@pytest.mark.parametrize("r, v", [(100, 80), (500, 300), (1000, 1000), (40, 40)])
def test_delta_zero_is_the_binomial_tail(r, v):
    """With δ = 0 the bound is the ε at which P[Binomial(r, e^ε/(1+e^ε)) >= v] = α."""
    def tail_minus_alpha(eps):
        return binom.sf(v - 1, r, 1 / (1 + math.exp(-eps))) - 0.05

    expected = brentq(tail_minus_alpha, 1e-9, 50)
    assert epsilon_lower_bound(m=2 * r, r=r, v=v, delta=0.0) == pytest.approx(expected, abs=1e-5)


def test_perfect_guesses_have_a_closed_form():
    """All r guesses right, δ = 0: q^r = α, so ε̂ = logit(α^(1/r)) — the most r guesses can show."""
    for r in (10, 100, 1000):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(m=r, r=r, v=r, delta=0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)


def test_chance_level_guesses_prove_nothing_and_delta_only_lowers_the_bound():
    assert epsilon_lower_bound(m=1000, r=1000, v=500, delta=1e-5) == 0.0
    bounds = [epsilon_lower_bound(m=1000, r=200, v=180, delta=d) for d in (0.0, 1e-6, 1e-4, 1e-3)]
    assert bounds == sorted(bounds, reverse=True) and bounds[0] > bounds[-1] > 0
    assert p_value(m=1000, r=200, v=180, epsilon=0.5, delta=1e-4) > p_value(m=1000, r=200, v=180, epsilon=0.5,
                                                                            delta=0.0)


def test_p_value_delta_term_by_hand():
    """The δ term: 2mδ · max_i P[v > B >= v-i] / i, B ~ Binomial(r, q)."""
    m, r, v, eps, delta = 50, 20, 15, 1.0, 1e-3
    q = 1 / (1 + math.exp(-eps))
    alpha = max(sum(binom.pmf(j, r, q) for j in range(v - i, v)) / i for i in range(1, v + 1))
    assert p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(
        binom.sf(v - 1, r, q) + 2 * m * delta * alpha, rel=1e-12)


def randomised_response(eps: float, m: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """An ε-DP mechanism per canary (exactly ε, δ = 0): report the inclusion bit, flipped w.p. 1/(1+e^ε)."""
    included = rng.random(m) < 0.5
    flip = rng.random(m) < 1 / (1 + math.exp(eps))
    return (included ^ flip) + 1e-3 * rng.random(m), included  # tiny noise orders ties at random


def test_bound_is_valid_and_has_power_on_randomised_response():
    rng = np.random.default_rng(0)
    eps = 2.0
    bounds = [audit_scores(*randomised_response(eps, 1000, rng), delta=0.0).epsilon_lower for _ in range(60)]
    assert np.mean(np.array(bounds) > eps) <= 0.05  # valid: above the true ε at most α of the time
    assert np.median(bounds) > 0.7 * eps  # powerful: 1000 canaries nearly recover ε
    nothing = [audit_scores(*randomised_response(0.0, 1000, rng), delta=1e-5).epsilon_lower for _ in range(20)]
    assert np.mean(np.array(nothing) > 0) <= 0.1 and max(nothing) < 0.5


def test_audit_counts_guesses_from_both_ends():
    scores = np.arange(10.0)
    included = np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 1], dtype=bool)
    result = audit_scores(scores, included, delta=0.0, shares=(0.4, 1.0))
    # 4 guesses: "in" for scores 9, 8 (both in), "out" for 0, 1 (both out): 4 right
    assert result.tried[0][:2] == (4, 4)
    # 10 guesses: top 5 "in" (5 of them in... 9,8,7,6,5 -> 4 in), bottom 5 "out" (0..4 -> 4 out)
    assert result.tried[1][:2] == (10, 8)
    assert result.m == 10 and result.included == 5
    with pytest.raises(ValueError, match="one score and one inclusion bit"):
        audit_scores(scores, included[:5], delta=0.0)
