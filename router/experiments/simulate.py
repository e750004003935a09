"""How often the verdict rule decides wrong, measured: the project's own `report` fed simulated
users, phase after phase, checked at the rollout controller's cadence.

A phase draws users one after another into the arms by their weights. Each user makes a
Poisson number of requests (at least one) around their own mean, so the metric is a per-user
ratio as in the store (router/experiments/stats.py, `RatioMoments`). Every `peek_users`
users the rule looks, as the rollout controller does every `evaluation_seconds`: the first
ROLL_BACK or PROMOTE ends the phase; a phase still undecided at the horizon ends
KEEP_RUNNING. The same phases are judged with the always-valid interval the router uses, with
it after CUPED on each user's earlier requests (router/experiments/cuped.py), and with a
fixed-horizon (Welch) interval looked at just as often, the comparison that shows why the
always-valid one is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from router.config import ArmSettings, Criterion, ExperimentSettings
from router.experiments.cuped import CupedSums, adjust, pooled
from router.experiments.results import ArmResults, Interval, report
from router.experiments.stats import Statistic, confidence_sequence, welch

METRIC = "latency_ms"
VERDICTS = ("ROLL_BACK", "PROMOTE", "KEEP_RUNNING")


@dataclass(frozen=True)
class World:
    """The truth a phase draws from: the candidate's mean is the control's times
    (1 + `relative_difference`); worse is higher, as for latency."""

    name: str
    relative_difference: float
    control_mean: float = 100.0
    user_sd: float = 40.0
    """Between users: the spread of users' own means."""
    request_sd: float = 20.0
    """Within a user: the spread of one request around the user's mean."""
    requests_per_user: float = 3.0
    rho: float = 0.7
    """How users' earlier requests correlate with theirs in the phase, as CUPED sees them: the
    correlation of their linearised values (a user's sum less the mean times their count,
    before and in the phase) over users with earlier requests; rho squared of the variance is
    what CUPED can remove among them."""
    new_users: float = 0.1
    """The share of users with no earlier request (a zero covariate); the others made as many
    requests before the phase as in it (a user's activity persists)."""

    def latent_rho(self) -> float:
        """The correlation of users' own means before and in the phase that gives `rho`:
        requests' noise dilutes it by the factor below (y = 1 + Poisson(r - 1) requests)."""
        r = self.requests_per_user
        ey, ey2 = r, (r - 1) + r**2
        signal = ey2 * self.user_sd**2
        latent = self.rho * (signal + ey * self.request_sd**2) / signal
        if latent > 1:
            raise ValueError(f"rho {self.rho} is out of reach of this world's request noise")
        return latent


@dataclass(frozen=True)
class Cadence:
    peek_users: int = 200
    """Users between two looks: what arrives in one `evaluation_seconds`."""
    horizon_users: int = 10_000


def fixed_horizon(treatment: Statistic, control: Statistic, alpha: float) -> tuple[float, float]:
    """Welch's interval: valid when looked at once, at a sample size fixed in advance."""
    return welch(treatment, control, alpha).ci


@dataclass(frozen=True)
class Rule:
    interval: Interval
    cuped: bool = False


RULES: dict[str, Rule] = {
    "always-valid": Rule(confidence_sequence),
    "always-valid + CUPED": Rule(confidence_sequence, cuped=True),
    "fixed-horizon": Rule(fixed_horizon),
}
"""The router's rule, the same with CUPED, and a fixed-horizon interval looked at as often."""


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


@dataclass(frozen=True)
class Users:
    """Per user: in the candidate arm or not; the sum (x) and count (y) of their requests'
    values in the phase, and before it (a, b)."""

    candidate: np.ndarray
    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray


def _users(world: World, n: int, rng: np.random.Generator) -> Users:
    candidate = rng.random(n) < 0.5
    z, w = rng.standard_normal(n), rng.standard_normal(n)
    own = world.control_mean * (1 + world.relative_difference * candidate) + world.user_sd * z
    r = world.latent_rho()
    earlier = world.control_mean + world.user_sd * (r * z + math.sqrt(1 - r**2) * w)
    y = (1 + rng.poisson(world.requests_per_user - 1, n)).astype(np.float64)
    x = y * own + world.request_sd * np.sqrt(y) * rng.standard_normal(n)
    b = np.where(rng.random(n) < world.new_users, 0.0, y)
    a = b * earlier + world.request_sd * np.sqrt(b) * rng.standard_normal(n)
    return Users(candidate, x, y, a, b)


def _arms(users: Users, upto: int, cuped: bool) -> dict[str, ArmResults]:
    """Both arms from the first `upto` users: ratio statistics, or CUPED-adjusted ones."""
    sums = {}
    for name, mask in (("control", ~users.candidate[:upto]), ("candidate", users.candidate[:upto])):
        sums[name] = CupedSums.of(*(v[:upto][mask] for v in (users.x, users.y, users.a, users.b)))
    slope, centre = pooled(list(sums.values()))
    out = {}
    for name, s in sums.items():
        stat: Statistic = adjust(s, slope, centre) if cuped else s.post
        out[name] = ArmResults(units=s.n, requests=s.post.requests, metrics={METRIC: stat})
    return out


def run_phase(
    config: ExperimentSettings, world: World, cadence: Cadence, rule: Rule,
    rng: np.random.Generator,
) -> Phase:  # fmt: skip
    users = _users(world, cadence.horizon_users, rng)
    for upto in range(cadence.peek_users, cadence.horizon_users + 1, cadence.peek_users):
        verdict = report(config, _arms(users, upto, rule.cuped), interval=rule.interval).verdict
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
    config: ExperimentSettings, world: World, cadence: Cadence, rule: Rule, phases: int,
    seed: int,
) -> Rates:  # fmt: skip
    """`phases` phases of `world`, each judged at every look by `rule`; the same seed draws
    the same users whatever the rule, so two rules meet the same phases."""
    rng = np.random.default_rng(seed)
    rates = Rates(phases)
    for _ in range(phases):
        phase = run_phase(config, world, cadence, rule, rng)
        rates.counts[phase.verdict] += 1
        if phase.verdict == "PROMOTE":
            rates.promote_users.append(phase.users)
    return rates


def binomial_upper(rate: float, phases: int, z: float = 3.0) -> float:
    """`rate` plus `z` binomial standard errors at that rate: what a run of `phases` phases
    may read, by chance alone, when the true rate is `rate`."""
    return rate + z * math.sqrt(rate * (1 - rate) / phases)
