"""Experiment statistics against reference values from scipy and statsmodels, and A/A
simulations: peeking breaks a fixed-horizon test but not the confidence sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from router.experiments.stats import (
    Moments,
    betainc,
    chi2_sf,
    confidence_sequence,
    srm_p_value,
    t_ppf,
    t_sf,
    welch,
)

RNG = np.random.default_rng(20261124)


@pytest.mark.parametrize(
    ("x", "df"), [(0.5, 1), (3.84, 1), (32.0, 1), (10.0, 3), (0.1, 7), (150.0, 99), (2.0, 2)]
)
def test_chi2_sf_matches_scipy(x: float, df: int) -> None:
    assert chi2_sf(x, df) == pytest.approx(sp.chi2.sf(x, df), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    ("t", "df"), [(0.0, 5), (1.5, 3), (-2.2, 10), (4.0, 30.5), (0.3, 1000), (-8.0, 2.5)]
)
def test_t_distribution_matches_scipy(t: float, df: float) -> None:
    assert t_sf(t, df) == pytest.approx(sp.t.sf(t, df), rel=1e-9, abs=1e-14)
    assert t_ppf(0.975, df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-8)


@pytest.mark.parametrize(
    ("a", "b", "x"), [(0.5, 0.5, 0.3), (2.0, 5.0, 0.2), (10.0, 3.0, 0.9), (50.0, 50.0, 0.5)]
)
def test_betainc_matches_scipy(a: float, b: float, x: float) -> None:
    from scipy.special import betainc as sp_betainc

    assert betainc(a, b, x) == pytest.approx(sp_betainc(a, b, x), rel=1e-10)


def test_moments_add_up() -> None:
    a, b = RNG.normal(5, 2, 300), RNG.normal(5, 2, 200)
    merged = Moments.of(a) + Moments.of(b)
    both = np.concatenate([a, b])
    assert merged.mean == pytest.approx(both.mean()) and merged.variance == pytest.approx(
        both.var(ddof=1)
    )


def test_welch_matches_scipy() -> None:
    t, c = RNG.lognormal(3.0, 0.5, 400), RNG.lognormal(2.95, 0.6, 350)
    effect = welch(Moments.of(t), Moments.of(c))
    reference = sp.ttest_ind(t, c, equal_var=False)
    assert effect.p_value == pytest.approx(reference.pvalue, rel=1e-8)
    low, high = reference.confidence_interval(0.95)
    assert effect.ci == pytest.approx((low, high), rel=1e-7)
    assert effect.relative == pytest.approx(t.mean() / c.mean() - 1)


def test_relative_interval_covers_the_truth_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    runs = 400
    for _ in range(runs):
        t, c = rng.exponential(110, 2000), rng.exponential(100, 2000)
        low, high = welch(Moments.of(t), Moments.of(c)).relative_ci
        covered += low <= 0.10 <= high
    assert 0.92 <= covered / runs <= 0.98


def test_sample_ratio_mismatch() -> None:
    assert srm_p_value([10_400, 9_600], [0.5, 0.5]) < 0.001  # 52/48 at n = 20,000
    assert srm_p_value([10_040, 9_960], [0.5, 0.5]) > 0.001
    counts = [4_100, 3_000, 2_900]
    expected = np.array([0.4, 0.3, 0.3]) * sum(counts)
    assert srm_p_value(counts, [0.4, 0.3, 0.3]) == pytest.approx(
        sp.chisquare(counts, expected).pvalue, rel=1e-9
    )
    true_split = np.random.default_rng(3).binomial(20_000, 0.5)
    assert srm_p_value([true_split, 20_000 - true_split], [0.5, 0.5]) > 0.001


def _aa_runs(runs: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`runs` A/A experiments of `n` observations per arm (no true difference)."""
    return rng.lognormal(4.0, 0.5, (runs, n)), rng.lognormal(4.0, 0.5, (runs, n))


def _cumulative(values: np.ndarray, looks: np.ndarray) -> list[Moments]:
    s, q = np.cumsum(values), np.cumsum(values * values)
    return [Moments(int(k), float(s[k - 1]), float(q[k - 1])) for k in looks]


def test_peeking_inflates_a_fixed_horizon_test_but_not_the_confidence_sequence() -> None:
    rng = np.random.default_rng(11)
    runs, n, alpha = 300, 5_000, 0.05
    looks = np.arange(100, n + 1, 100)  # look every 100 samples per arm
    treatment, control = _aa_runs(runs, n, rng)
    fixed_false, sequential_false = 0, 0
    for r in range(runs):
        t_m, c_m = _cumulative(treatment[r], looks), _cumulative(control[r], looks)
        fixed = any(welch(t, c, alpha).p_value < alpha for t, c in zip(t_m, c_m, strict=True))
        seq = any(
            not (lo <= 0 <= hi)
            for lo, hi in (
                confidence_sequence(t, c, alpha, n) for t, c in zip(t_m, c_m, strict=True)
            )
        )
        fixed_false += fixed
        sequential_false += seq
    assert fixed_false / runs > 2 * alpha  # peeking at a fixed-horizon test: well past alpha
    assert sequential_false / runs <= alpha + 0.02


def test_confidence_sequence_detects_a_ten_percent_latency_regression() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    control = rng.lognormal(4.0, 0.5, n)
    treatment = rng.lognormal(4.0 + math.log(1.10), 0.5, n)  # 10% slower
    low, high = confidence_sequence(Moments.of(treatment), Moments.of(control), 0.05, n)
    assert low > 0
    assert high / Moments.of(control).mean < 0.2
