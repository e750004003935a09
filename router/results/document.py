"""The experiment report as one document (`router report --json`, RouterAdmin's
GetExperimentReport and the results page all read it): the verdict from the store's phase
statistics (CUPED-adjusted when configured, with the unadjusted numbers beside them), and a
segment breakdown when asked for."""

from __future__ import annotations

from typing import Any

from router.config import ConfigError, RouterConfig, find_experiment
from router.experiments.cuped import Adjusted, variance_reduction
from router.experiments.results import ArmResults, Comparison, Report
from router.experiments.results import report as judge_phase
from router.experiments.segments import Correction
from router.experiments.stats import Effect, Statistic, confidence_sequence, welch
from router.results.cuped_query import phase_arms
from router.results.query import phases
from router.results.segment_report import segments_json
from router.results.store import ResultsStore


def _effect_fields(control_mean: float, arm_mean: float, effect: Effect,
                   cs: tuple[float, float]) -> dict[str, Any]:  # fmt: skip
    return {
        "control_mean": control_mean,
        "arm_mean": arm_mean,
        "difference": effect.difference,
        "ci": list(effect.ci),
        "relative": effect.relative,
        "relative_ci": list(effect.relative_ci),
        "p_value": effect.p_value,
        "confidence_sequence": list(cs),
    }


def _comparison(c: Comparison, arms: dict[str, ArmResults], control: str,
                alpha: float) -> dict[str, Any]:  # fmt: skip
    """One comparison; under CUPED its fields are the adjusted ones, and `unadjusted` and
    `cuped` say what the adjustment did."""
    out = {"arm": c.arm, "metric": c.metric,
           **_effect_fields(c.control_mean, c.arm_mean, c.effect, c.cs)}  # fmt: skip
    t, b = arms[c.arm].metrics[c.metric], arms[control].metrics[c.metric]
    if isinstance(t, Adjusted) and isinstance(b, Adjusted):
        before, after = t.unadjusted, b.unadjusted
        out["unadjusted"] = _effect_fields(after.mean, before.mean, welch(before, after, alpha),
                                           confidence_sequence(before, after, alpha))  # fmt: skip
        out["cuped"] = {
            "theta": t.theta,
            "variance_reduction": variance_reduction(t, b),
            "users_with_history": t.with_history + b.with_history,
        }
    return out


def _mean(s: Statistic) -> float:
    """The mean over the arm's requests (before any adjustment)."""
    return s.unadjusted.mean if isinstance(s, Adjusted) else s.mean


def as_json(
    result: Report, arms: dict[str, ArmResults], seed: str, alpha: float = 0.05
) -> dict[str, Any]:
    return {
        "experiment": result.experiment,
        "seed": seed,
        "control": result.control,
        "verdict": result.verdict,
        "reasons": result.reasons,
        "counts": result.counts,
        "units": {name: a.units for name, a in arms.items()},
        # Per arm and metric: the mean over the arm's requests that have the metric.
        "means": {name: {m: _mean(s) for m, s in a.metrics.items()} for name, a in arms.items()},
        "srm_p_value": result.srm_p_value,
        "comparisons": [_comparison(c, arms, result.control, alpha) for c in result.comparisons],
    }


def phase_report(
    config: RouterConfig,
    store: ResultsStore,
    name: str,
    seed: str | None,
    segment: str | None = None,
    correction: Correction = "holm",
) -> dict[str, Any]:
    """The phase's report (`seed`: an earlier phase; the current one without); with
    `segment`, under `segments`, the phase broken down by that dimension."""
    settings = find_experiment(config.routes, name)
    if settings is None:
        raise ConfigError(f"no experiment {name!r} in the configuration")
    phase = seed or settings.seed
    stored = phases(store, name)
    if phase != settings.seed and phase not in stored:
        known = ", ".join([settings.seed, *(p for p in stored if p != settings.seed)])
        raise ConfigError(
            f"experiment {name!r} has no phase with seed {phase!r} in {store.describe()}; its "
            f"phases: {known} (the first is the current one)"
        )
    arms = phase_arms(store, settings, phase, sorted(config.outcomes))
    better = {m: o.better == "higher" for m, o in config.outcomes.items()}
    report = as_json(judge_phase(settings, arms, better), arms, phase, settings.alpha)
    if segment:
        report["segments"] = segments_json(config, store, settings, phase, segment, correction)
    return report


def phase_page(
    config: RouterConfig,
    store: ResultsStore,
    name: str,
    seed: str | None,
    correction: Correction = "holm",
) -> str:
    """`router report --html`: the report, the effect over the phase, every dimension's
    segments, the ramp history."""
    from router.results.page import render, timeline
    from router.rollout.state import StateError
    from router.rollout.store import FileStore

    report = phase_report(config, store, name, seed)
    settings = find_experiment(config.routes, name)
    assert settings is not None  # phase_report found it
    better = {m: o.better == "higher" for m, o in config.outcomes.items()}
    points = timeline(store, settings, report["seed"], sorted(config.outcomes), better)
    report["segments_by"] = [
        segments_json(config, store, settings, report["seed"], d, correction)
        for d in settings.dimensions
    ]
    history = []
    if config.rollout.state_file is not None:
        try:
            state = FileStore(config.rollout.state_file).read()
        except StateError as exc:
            raise ConfigError(f"the rollout state: {exc}") from exc
        history = [d for d in state.history
                   if d.experiment == name and d.seed == report["seed"]]  # fmt: skip
    return render(report, settings, better, points, history)
