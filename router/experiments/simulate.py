"""How often the verdict rule decides wrong, measured: the project's own `report` fed simulated
users, phase after phase, checked at the rollout controller's cadence.

A phase draws users one after another into the arms by their weights. Each user makes a
Poisson number of requests (at least one) around their own mean, so the metric is a per-user
ratio as in the store (router/experiments/stats.py, `RatioMoments`). Every `peek_users`
users the rule looks, as the rollout controller does every `evaluation_seconds`: the first
ROLL_BACK or PROMOTE ends the phase; a phase still undecided at the horizon ends
KEEP_RUNNING. The same phases are judged with the always-valid interval the router uses and
with a fixed-horizon (Welch) interval looked at just as often, the comparison that shows why
the first is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from router.config import ArmSettings, Criterion, ExperimentSettings
from router.experiments.results import ArmResults, Interval, report
from router.experiments.stats import RatioMoments, Statistic, confidence_sequence, welch

METRIC = "latency_ms"
VERDICTS = ("ROLL_BACK", "PROMOTE", "KEEP_RUNNING")


@dataclass(frozen=True)
class World:
    """The truth a phase draws from: the candidate's mean is the control's times
    (1 + `relative_difference`); worse is higher, as for latency."""

    name: str
    relative_difference: float
    control_mean: float = 100.0
    user_sd: float = 30.0
    """Between users: the spread of users' own means."""
    request_sd: float = 40.0
    """Within a user: the spread of one request around the user's mean."""
    requests_per_user: float = 3.0


@dataclass(frozen=True)
class Cadence:
    peek_users: int = 200
    """Users between two looks: what arrives in one `evaluation_seconds`."""
    horizon_users: int = 10_000


def fixed_horizon(treatment: Statistic, control: Statistic, alpha: float) -> tuple[float, float]:
    """Welch's interval: valid when looked at once, at a sample size fixed in advance."""
    return welch(treatment, control, alpha).ci


INTERVALS: dict[str, Interval] = {"always-valid": confidence_sequence,
                                  "fixed-horizon": fixed_horizon}  # fmt: skip


def settings(
    guardrail: float = 0.10, success: float = 0.02, alpha: float = 0.05
) -> ExperimentSettings:
    """A 50/50 experiment on latency: ROLL_BACK when the candidate is shown more than
    `guardrail` worse, PROMOTE when it is shown at most `success` worse."""
    return ExperimentSettings(
        name="simulated",
        seed="s",
        arms=[ArmSettings(name="control", model="a", weight=0.5),
              ArmSettings(name="candidate", model="b", weight=0.5)],
        guardrails=[Criterion(metric=METRIC, max_relative_increase=guardrail)],
        success=[Criterion(metric=METRIC, max_relative_increase=success)],
        alpha=alpha,
    )  # fmt: skip


@dataclass(frozen=True)
class Phase:
    verdict: str
    users: int
    """Users drawn when the verdict came (the horizon for KEEP_RUNNING)."""


def _users(world: World, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per user: candidate or not, the sum of their requests' values, their request count."""
    candidate = rng.random(n) < 0.5
    requests = 1 + rng.poisson(world.requests_per_user - 1, n)
    mean = world.control_mean * (1 + world.relative_difference * candidate)
    own = mean + world.user_sd * rng.standard_normal(n)
    total = requests * own + world.request_sd * np.sqrt(requests) * rng.standard_normal(n)
    return candidate, total, requests.astype(np.float64)


def _arm(mask: np.ndarray, x: np.ndarray, y: np.ndarray, upto: int) -> ArmResults:
    m, xs, ys = mask[:upto], x[:upto], y[:upto]
    xs, ys = xs[m], ys[m]
    stat = RatioMoments(int(m.sum()), float(xs.sum()), float((xs * xs).sum()), float(ys.sum()),
                        float((ys * ys).sum()), float((xs * ys).sum()))  # fmt: skip
    return ArmResults(units=stat.n, requests=stat.requests, metrics={METRIC: stat})


def run_phase(
    config: ExperimentSettings, world: World, cadence: Cadence, interval: Interval,
    rng: np.random.Generator,
) -> Phase:  # fmt: skip
    candidate, x, y = _users(world, cadence.horizon_users, rng)
    for upto in range(cadence.peek_users, cadence.horizon_users + 1, cadence.peek_users):
        arms = {"control": _arm(~candidate, x, y, upto), "candidate": _arm(candidate, x, y, upto)}
        verdict = report(config, arms, interval=interval).verdict
        if verdict != "KEEP_RUNNING":
            return Phase(verdict, upto)
    return Phase("KEEP_RUNNING", cadence.horizon_users)


@dataclass
class Rates:
    phases: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    promote_users: list[int] = field(default_factory=list)

    def rate(self, verdict: str) -> float:
        return self.counts[verdict] / self.phases

    @property
    def median_users_to_promote(self) -> float:
        return float(np.median(self.promote_users)) if self.promote_users else math.nan


def simulate(
    config: ExperimentSettings, world: World, cadence: Cadence, interval: Interval,
    phases: int, seed: int,
) -> Rates:  # fmt: skip
    """`phases` phases of `world`, each judged at every look by `interval`; the same seed
    draws the same users whatever the interval, so two rules meet the same phases."""
    rng = np.random.default_rng(seed)
    rates = Rates(phases)
    for _ in range(phases):
        phase = run_phase(config, world, cadence, interval, rng)
        rates.counts[phase.verdict] += 1
        if phase.verdict == "PROMOTE":
            rates.promote_users.append(phase.users)
    return rates


def binomial_upper(rate: float, phases: int, z: float = 3.0) -> float:
    """`rate` plus `z` binomial standard errors at that rate: what a run of `phases` phases
    may read, by chance alone, when the true rate is `rate`."""
    return rate + z * math.sqrt(rate * (1 - rate) / phases)
