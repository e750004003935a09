"""Per-arm results and the experiment report: sufficient statistics per (experiment, arm),
effects against the control arm, a sample-ratio check, guardrails, success criteria, and a
verdict with its reasons."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from router.config import Criterion, ExperimentSettings
from router.experiments.stats import Effect, Moments, confidence_sequence, srm_p_value, welch

METRICS = ("latency_ms", "error_rate", "fallback_rate", "quality_failure_rate")
SRM_ALPHA = 0.001


@dataclass
class ArmResults:
    metrics: dict[str, Moments] = field(
        default_factory=lambda: {m: Moments(0, 0.0, 0.0) for m in METRICS}
    )

    @property
    def count(self) -> int:
        return self.metrics["error_rate"].n

    def add(self, latency_ms: float, error: bool, fallback: bool, quality_failed: bool) -> None:
        for name, value in (
            ("latency_ms", latency_ms),
            ("error_rate", float(error)),
            ("fallback_rate", float(fallback)),
            ("quality_failure_rate", float(quality_failed)),
        ):
            m = self.metrics[name]
            self.metrics[name] = Moments(m.n + 1, m.total + value, m.squares + value * value)


PhaseKey = tuple[str, str]
"""(experiment, seed): results of one phase never mix with another's."""


class ResultsCollector:
    """Per-arm results per phase. The newest `keep` phases of each experiment stay readable
    (the previous one until the router restarts, in practice)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.arms: dict[PhaseKey, dict[str, ArmResults]] = {}

    def phase(self, experiment: str, seed: str) -> dict[str, ArmResults]:
        """The phase's results, read-only: an unknown phase reads as empty."""
        return self.arms.get((experiment, seed), {})

    def phases(self, experiment: str) -> list[str]:
        """Seeds with results, newest first."""
        return [seed for e, seed in reversed(self.arms) if e == experiment]

    def record(
        self,
        experiment: str,
        seed: str,
        arm: str,
        latency_ms: float,
        error: bool,
        fallback: bool,
        quality_failed: bool,
    ) -> None:
        key = (experiment, seed)
        arms = self.arms.get(key)
        if arms is None:
            arms = self.arms[key] = {}
            older = [k for k in self.arms if k[0] == experiment][: -self.keep]
            for k in older:
                del self.arms[k]
        results = arms.get(arm)
        if results is None:
            results = arms[arm] = ArmResults()
        results.add(latency_ms, error, fallback, quality_failed)


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


def _allowed(criterion: Criterion, control_mean: float) -> float:
    """The largest acceptable (arm - control) difference under `criterion`."""
    bounds = []
    if criterion.max_absolute_increase is not None:
        bounds.append(criterion.max_absolute_increase)
    if criterion.max_relative_increase is not None:
        bounds.append(criterion.max_relative_increase * abs(control_mean))
    return min(bounds)


def report(settings: ExperimentSettings, arms: dict[str, ArmResults]) -> Report:
    control = settings.control or settings.arms[0].name
    counts = {a.name: arms[a.name].count if a.name in arms else 0 for a in settings.arms}
    weighted = [(counts[a.name], a.weight) for a in settings.arms if a.weight > 0]
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
        for metric in METRICS:
            t, c = results.metrics[metric], base.metrics[metric]
            if t.n < 2 or c.n < 2:
                continue
            effect = welch(t, c, settings.alpha)
            cs = confidence_sequence(t, c, settings.alpha)
            comparisons.append(Comparison(arm.name, metric, c.mean, t.mean, effect, cs))
        by_metric = {x.metric: x for x in comparisons if x.arm == arm.name}
        for g in settings.guardrails:
            x = by_metric.get(g.metric)
            if x is not None and x.cs[0] > (limit := _allowed(g, x.control_mean)):
                failing.append(
                    f"guardrail {g.metric}: {arm.name} is worse than {control} by at least "
                    f"{x.cs[0]:.4g} (always-valid interval [{x.cs[0]:.4g}, {x.cs[1]:.4g}]; "
                    f"allowed {limit:.4g})"
                )
        for criterion in settings.success:
            x = by_metric.get(criterion.metric)
            if (
                x is None
                or not math.isfinite(x.cs[1])
                or x.cs[1] > _allowed(criterion, x.control_mean)
            ):
                upper = f"{x.cs[1]:.4g}" if x is not None else "unknown"
                limit = _allowed(criterion, x.control_mean) if x else float("nan")
                unproven.append(
                    f"success {criterion.metric}: {arm.name} not yet shown within {limit:.4g} "
                    f"of {control} (upper bound {upper})"
                )
    if srm < SRM_ALPHA:
        reasons.append(
            f"sample ratio mismatch (chi-square p = {srm:.2g} < {SRM_ALPHA}): counts {counts} "
            "do not match the weights; results are not trustworthy"
        )
    if failing:
        verdict = "ROLL_BACK"
        reasons += failing
    elif not enough:
        verdict = "KEEP_RUNNING"
        reasons.append(f"fewer than {settings.min_samples} requests in some arm: {counts}")
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
