"""CUPED: each user's value of a metric in the phase, adjusted for their value of the same
metric before it (Deng, Xu, Kohavi and Walker, 2013).

The metrics here are per-user ratios (a user's sum over their requests / their count), so
both the metric and its covariate go through the delta method's linearisation first, as the
CUPED paper's appendix B and Statsig's ratio CUPED do: per user, L = (x - M y) / mean(y) for
the phase and K = (a - P b) / mean(b) for the earlier period, with M and P the arm's ratios.
A user with no earlier request has a = b = 0, so K = 0: a zero covariate, as the paper keeps it.
With one request per user in both periods this is GrowthBook's `RegressionAdjustedStatistic`
exactly: theta pooled across arms on the joint sums (its `compute_theta`), the variance
Var(L) + theta^2 Var(K) - 2 theta Cov(L, K), and the same differences between arms. The
adjusted mean is the paper's, M - theta (P - the pooled P), centred so that it stays on the
metric's own scale (gbstats' M - theta P is not): a relative bound, a share of the control's
mean, then means what it says.

Everything is computed from per-arm sums of per-user values and their products, which the
store computes in SQL (router/results/cuped_query.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from router.experiments.stats import RatioMoments


@dataclass(frozen=True)
class CupedSums:
    """One arm and metric: over its users, sums of the phase's x (the metric's sum) and y (its
    count), the earlier period's a and b, and their products."""

    n: int
    x: float
    xx: float
    y: float
    yy: float
    xy: float
    a: float
    aa: float
    b: float
    bb: float
    ab: float
    xa: float
    xb: float
    ya: float
    yb: float
    with_history: int
    """Users with at least one earlier request that has the metric."""

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> CupedSums:
        """From per-user arrays (the simulation's and the tests'; the store sums in SQL)."""

        def s(v: np.ndarray) -> float:
            return float(v.sum())

        return cls(len(x), s(x), s(x * x), s(y), s(y * y), s(x * y), s(a), s(a * a), s(b),
                   s(b * b), s(a * b), s(x * a), s(x * b), s(y * a), s(y * b),
                   int((b > 0).sum()))  # fmt: skip

    def __add__(self, other: CupedSums) -> CupedSums:
        return CupedSums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def post(self) -> RatioMoments:
        return RatioMoments(self.n, self.x, self.xx, self.y, self.yy, self.xy)

    def _cov(self, uv: float, u: float, v: float) -> float:
        return (uv - u * v / self.n) / (self.n - 1)

    def linearised(self) -> tuple[float, float, float]:
        """Var(L), Var(K), Cov(L, K) over the users, each ratio at its own mean."""
        if self.n < 2 or not self.y:
            return math.nan, math.nan, math.nan
        m, ybar = self.x / self.y, self.y / self.n
        var_l = self.post.variance
        if not self.b:
            return var_l, 0.0, 0.0
        p, bbar = self.a / self.b, self.b / self.n
        c = self._cov
        var_k = (c(self.aa, self.a, self.a) - 2 * p * c(self.ab, self.a, self.b)
                 + p * p * c(self.bb, self.b, self.b)) / bbar**2  # fmt: skip
        cov = (c(self.xa, self.x, self.a) - p * c(self.xb, self.x, self.b)
               - m * c(self.ya, self.y, self.a) + m * p * c(self.yb, self.y, self.b)
               ) / (ybar * bbar)  # fmt: skip
        return var_l, max(var_k, 0.0), cov

    @property
    def pre_mean(self) -> float:
        """The earlier period's ratio; 0 when no user of the arm has an earlier request."""
        return self.a / self.b if self.b else 0.0


def theta(arms: list[CupedSums]) -> float:
    """The adjustment's slope, pooled across arms on their joint sums (gbstats'
    `compute_theta`): 0 when the covariate or the metric does not vary."""
    joint = arms[0]
    for arm in arms[1:]:
        joint = joint + arm
    var_l, var_k, cov = joint.linearised()
    if not var_k or not var_l or math.isnan(var_k) or math.isnan(var_l):
        return 0.0
    return cov / var_k


@dataclass(frozen=True)
class Adjusted:
    """One arm's metric after CUPED: a statistic (n, mean, variance) the effects take like the
    others, with what it was before the adjustment."""

    n: int
    mean: float
    variance: float
    unadjusted: RatioMoments
    theta: float
    with_history: int


def pooled(arms: list[CupedSums]) -> tuple[float, float]:
    """Theta and the pooled earlier-period ratio the adjustment centres on."""
    joint = arms[0]
    for arm in arms[1:]:
        joint = joint + arm
    return theta(arms), joint.pre_mean


def adjust(sums: CupedSums, slope: float, centre: float = 0.0) -> Adjusted:
    var_l, var_k, cov = sums.linearised()
    mean = sums.post.mean - slope * (sums.pre_mean - centre)
    variance = var_l + slope * slope * var_k - 2 * slope * cov
    return Adjusted(sums.n, mean, max(variance, 0.0), sums.post, slope, sums.with_history)


def variance_reduction(treatment: Adjusted, control: Adjusted) -> float:
    """How much of the difference's variance the adjustment removed (0.3: 30 %)."""
    before = (treatment.unadjusted.variance / treatment.n
              + control.unadjusted.variance / control.n)  # fmt: skip
    after = treatment.variance / treatment.n + control.variance / control.n
    return 1 - after / before if before > 0 else 0.0
