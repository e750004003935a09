"""The experiment report from per-arm results: effects against the control arm, a
sample-ratio check over units, guardrails, success criteria, and a verdict with its reasons.
The results come from the results store (router/results/query.py), aggregated per unit."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from router.config import REQUEST_METRICS, Criterion, ExperimentSettings
from router.experiments.stats import Effect, Statistic, confidence_sequence, srm_p_value, welch

METRICS = REQUEST_METRICS
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class ArmResults:
    """One arm of one phase: its units (users), requests, and a statistic per metric."""

    units: int
    requests: int
    metrics: dict[str, Statistic] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.requests


@dataclass(frozen=True)
class Comparison:
    arm: str
    metric: str
    control_mean: float
    arm_mean: float
    effect: Effect
    cs: tuple[float, float]


@dataclass(frozen=True)
class Report:
    experiment: str
    control: str
    verdict: str
    reasons: list[str]
    counts: dict[str, int]
    srm_p_value: float
    comparisons: list[Comparison]


def allowed_difference(criterion: Criterion, control_mean: float) -> float:
    """The largest acceptable (arm - control) difference under `criterion`."""
    bounds = []
    if criterion.max_absolute_increase is not None:
        bounds.append(criterion.max_absolute_increase)
    if criterion.max_relative_increase is not None:
        bounds.append(criterion.max_relative_increase * abs(control_mean))
    return min(bounds)


def _bound(criterion: Criterion, control_mean: float) -> str:
    """The allowed difference as a person reads it: `0.05`, `+20 % of control (2.408)`."""
    absolute, relative = criterion.max_absolute_increase, criterion.max_relative_increase
    if relative is None:
        return f"{absolute:.4g}"
    limit = allowed_difference(criterion, control_mean)
    if absolute is None:
        return f"{relative:+.0%} of control ({limit:.4g})"
    return f"{absolute:.4g} or {relative:+.0%} of control, the smaller ({limit:.4g})"


def per_arm(counts: Mapping[str, int]) -> str:
    """`control 24, candidate 23`: counts per arm, as text (never a Python dict)."""
    return ", ".join(f"{arm} {n}" for arm, n in counts.items())


def _worse(x: Comparison, higher_is_better: bool) -> tuple[float, float]:
    """The always-valid interval of how much worse the arm is than the control."""
    low, high = x.cs
    return (-high, -low) if higher_is_better else (low, high)


Interval = Callable[[Statistic, Statistic, float], tuple[float, float]]
"""(treatment, control, alpha) -> an interval for the difference of means."""


def report(
    settings: ExperimentSettings,
    arms: dict[str, ArmResults],
    higher_is_better: Mapping[str, bool] | None = None,
    interval: Interval = confidence_sequence,
) -> Report:
    """`higher_is_better`: outcome metrics where a higher mean is better (request metrics are
    all lower-is-better). `interval` is what guardrails and success criteria are judged on:
    the always-valid confidence sequence, which the rollout controller may check as often as
    it likes; the decision-quality simulation (router/experiments/simulate.py) swaps in a
    fixed-horizon one to show what peeking does to it."""
    better = higher_is_better or {}
    control = settings.control or settings.arms[0].name
    counts = {a.name: arms[a.name].requests if a.name in arms else 0 for a in settings.arms}
    # What was randomised is the user: the split is checked on units, not requests.
    units = {a.name: arms[a.name].units if a.name in arms else 0 for a in settings.arms}
    weighted = [(units[a.name], a.weight) for a in settings.arms if a.weight > 0]
    srm = (
        srm_p_value([c for c, _ in weighted], [w for _, w in weighted])
        if sum(c for c, _ in weighted)
        else 1.0
    )
    comparisons: list[Comparison] = []
    reasons: list[str] = []
    failing: list[str] = []
    unproven: list[str] = []
    enough = all(n >= settings.min_samples for n in counts.values())
    base = arms.get(control)
    for arm in settings.arms:
        if arm.name == control or arm.name not in arms or base is None:
            continue
        results = arms[arm.name]
        for metric in results.metrics:
            t, c = results.metrics[metric], base.metrics.get(metric)
            if c is None or t.n < 2 or c.n < 2 or math.isnan(t.mean) or math.isnan(c.mean):
                continue
            effect = welch(t, c, settings.alpha)
            cs = interval(t, c, settings.alpha)
            comparisons.append(Comparison(arm.name, metric, c.mean, t.mean, effect, cs))
        by_metric = {x.metric: x for x in comparisons if x.arm == arm.name}
        for g in settings.guardrails:
            x = by_metric.get(g.metric)
            if x is None:
                continue
            low, high = _worse(x, better.get(g.metric, False))
            if low > allowed_difference(g, x.control_mean):
                failing.append(
                    f"guardrail {g.metric}: {arm.name} is worse than {control} by at least "
                    f"{low:.4g} (always-valid interval [{low:.4g}, {high:.4g}]; "
                    f"allowed {_bound(g, x.control_mean)})"
                )
        for criterion in settings.success:
            x = by_metric.get(criterion.metric)
            worst = _worse(x, better.get(criterion.metric, False))[1] if x else math.nan
            if (
                x is None
                or not math.isfinite(worst)
                or worst > allowed_difference(criterion, x.control_mean)
            ):
                if x is None:
                    unproven.append(
                        f"success {criterion.metric}: no comparison of {arm.name} with "
                        f"{control} yet"
                    )
                    continue
                unproven.append(
                    f"success {criterion.metric}: {arm.name} not yet shown within "
                    f"{_bound(criterion, x.control_mean)} of {control} (upper bound {worst:.4g})"
                )
    if srm < SRM_ALPHA:
        reasons.append(
            f"sample ratio mismatch (chi-square p = {srm:.2g} < {SRM_ALPHA}): users per arm "
            f"{per_arm(units)} do not match the weights; results are not trustworthy"
        )
    if failing:
        verdict = "ROLL_BACK"
        reasons += failing
    elif not enough:
        verdict = "KEEP_RUNNING"
        reasons.append(f"fewer than {settings.min_samples} requests in some arm: {per_arm(counts)}")
    elif srm < SRM_ALPHA or unproven or not settings.success:
        verdict = "KEEP_RUNNING"
        reasons += unproven or (
            [] if settings.success else ["no success criteria declared: nothing to promote on"]
        )
    else:
        verdict = "PROMOTE"
        reasons.append(
            "every success criterion holds with always-valid confidence and no guardrail fails"
        )
    return Report(settings.name, control, verdict, reasons, counts, srm, comparisons)
