"""Statistics for experiments, on the standard library and numpy (no scipy at run time).

Two-sample estimates come from sufficient statistics (n, sum, sum of squares), so replicas and
Prometheus can aggregate them. Distributions are implemented here (regularised incomplete gamma
and beta by Lentz's continued fractions) and checked against scipy in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

import numpy as np

_NORMAL = NormalDist()
_EPS = 1e-14


# -- distributions ------------------------------------------------------------------------------


def _gammainc_upper(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x)."""
    if x <= 0:
        return 1.0
    if x < a + 1:  # series for P, then Q = 1 - P
        term = total = 1 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return max(0.0, 1 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))
    b, c, d = x + 1 - a, 1 / 1e-300, 1 / (x + 1 - a)
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with `df` degrees of freedom."""
    return _gammainc_upper(df / 2, x / 2)


def _betacf(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (1e-300 if abs(d) < 1e-300 else d)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (1e-300 if abs(d) < 1e-300 else d)
        c = 1 + aa / c
        c = 1e-300 if abs(c) < 1e-300 else c
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (1e-300 if abs(d) < 1e-300 else d)
        c = 1 + aa / c
        c = 1e-300 if abs(c) < 1e-300 else c
        delta = d * c
        h *= delta
        if abs(delta - 1) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def t_pdf(t: float, df: float) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t: Newton's method from the normal quantile."""
    t = _NORMAL.inv_cdf(p)
    for _ in range(50):
        step = ((1 - t_sf(t, df)) - p) / t_pdf(t, df)
        t -= step
        if abs(step) < 1e-12 * max(1.0, abs(t)):
            break
    return t


# -- sufficient statistics and two-sample effects ----------------------------------------------


@dataclass(frozen=True)
class Moments:
    """n, sum and sum of squares of one arm's observations: enough for means and variances."""

    n: int
    total: float
    squares: float

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> Moments:
        v = np.asarray(values, dtype=np.float64)
        return cls(int(v.size), float(v.sum()), float((v * v).sum()))

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.squares + other.squares)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator)."""
        if self.n < 2:
            return math.nan
        return max(self.squares - self.total * self.total / self.n, 0.0) / (self.n - 1)


@dataclass(frozen=True)
class RatioMoments:
    """A per-request metric when users are what is randomised: per unit (user) the sum of the
    metric over its requests (x) and their count (y); per arm the sums of x, y, their squares
    and cross-product (GrowthBook's `RatioStatistic`). The mean is sum(x) / sum(y); `variance`
    is the delta method's unit-level variance, so that variance / n is the variance of the
    mean with n the number of units, as for `Moments`: the effects below take either."""

    n: int
    """Units (users) in the arm."""
    x: float
    xx: float
    y: float
    yy: float
    xy: float

    @property
    def requests(self) -> int:
        """The observations behind the mean (sum of y)."""
        return round(self.y)

    @property
    def mean(self) -> float:
        return self.x / self.y if self.y else math.nan

    @property
    def variance(self) -> float:
        n = self.n
        if n < 2 or not self.y:
            return math.nan
        mx, my = self.x / n, self.y / n
        vx = (self.xx - self.x * self.x / n) / (n - 1)
        vy = (self.yy - self.y * self.y / n) / (n - 1)
        cxy = (self.xy - self.x * self.y / n) / (n - 1)
        v = vx / my**2 - 2 * cxy * mx / my**3 + mx**2 * vy / my**4
        return max(v, 0.0)


class Statistic(Protocol):
    """What the effects below read of an arm's metric: Moments, RatioMoments, or a
    CUPED-adjusted one (router/experiments/cuped.py)."""

    @property
    def n(self) -> int: ...

    @property
    def mean(self) -> float: ...

    @property
    def variance(self) -> float: ...


@dataclass(frozen=True)
class Effect:
    """Treatment minus control, absolute and relative, with two-sided intervals."""

    difference: float
    ci: tuple[float, float]
    relative: float
    relative_ci: tuple[float, float]
    p_value: float


def welch(treatment: Statistic, control: Statistic, alpha: float = 0.05) -> Effect:
    """Welch's t for the difference of means; the delta method for the relative effect."""
    vt, vc = treatment.variance / treatment.n, control.variance / control.n
    se = math.sqrt(vt + vc)
    diff = treatment.mean - control.mean
    df = (
        (vt + vc) ** 2 / (vt**2 / (treatment.n - 1) + vc**2 / (control.n - 1))
        if se > 0
        else math.inf
    )
    q = t_ppf(1 - alpha / 2, df) if math.isfinite(df) else _NORMAL.inv_cdf(1 - alpha / 2)
    p = 2 * t_sf(abs(diff / se), df) if se > 0 else (1.0 if diff == 0 else 0.0)
    mc, mt = control.mean, treatment.mean
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    if mc == 0:
        # A rate that is zero in the control arm has no relative change.
        relative, relative_ci = math.nan, (math.nan, math.nan)
    else:
        relative = mt / mc - 1
        # Var(mt/mc) ~ vt/mc^2 + mt^2 vc/mc^4 (first-order Taylor expansion).
        rel_se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
        relative_ci = (relative - z * rel_se, relative + z * rel_se)
    return Effect(diff, (diff - q * se, diff + q * se), relative, relative_ci, p)


def srm_p_value(counts: list[int], weights: list[float]) -> float:
    """Sample-ratio mismatch: chi-square goodness of fit of arm counts to configured weights."""
    total = sum(counts)
    expected = [total * w / sum(weights) for w in weights]
    stat = sum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True) if e > 0)
    return chi2_sf(stat, len(counts) - 1)


def confidence_sequence(
    treatment: Statistic, control: Statistic, alpha: float = 0.05, tuned_for: int = 10_000
) -> tuple[float, float]:
    """Always-valid interval for the difference of means (asymptotic confidence sequence,
    Waudby-Smith et al. 2023): it may be checked after every observation and still covers the
    truth with probability 1 - alpha. `tuned_for` is the sample size where it is tightest."""
    n = treatment.n + control.n
    diff = treatment.mean - control.mean
    # The scaled variance of the difference estimator: n * Var(diff).
    sigma2 = n * (treatment.variance / treatment.n + control.variance / control.n)
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuned_for
    radius = math.sqrt(sigma2) * math.sqrt(
        2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )
    return diff - radius, diff + radius
