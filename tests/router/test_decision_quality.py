"""The verdict rule's error rates, measured by simulation (router/experiments/simulate.py):
the project's own `report`, checked at the rollout controller's cadence on simulated phases.
Statistical bounds, not timings: each rate must stay under alpha plus three binomial
standard errors for the number of phases run (seeded, so a run is reproducible)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np

from router.experiments.simulate import (
    RULES,
    Cadence,
    World,
    _arms,
    _users,
    binomial_upper,
    settings,
    simulate,
)

PHASES = 200
CADENCE = Cadence(peek_users=200, horizon_users=6000)
CONFIG = settings(guardrail=0.10, success=0.02)
BOUND = binomial_upper(CONFIG.alpha, PHASES)


@functools.cache  # the same world and rule give the same phases: run them once
def _rates(world: World, rule: str = "always-valid") -> dict[str, float]:
    rates = simulate(CONFIG, world, CADENCE, RULES[rule], PHASES, seed=7)
    return {verdict: rates.rate(verdict) for verdict in rates.counts}


def test_the_simulated_worlds_are_what_they_say() -> None:
    world = World("3% worse", 0.03)
    users = _users(world, 200_000, np.random.default_rng(1))
    arms = _arms(users, len(users.x), cuped=False)
    c, t = arms["control"], arms["candidate"]
    ct, cc = t.metrics["latency_ms"], c.metrics["latency_ms"]
    assert abs(cc.mean - world.control_mean) < 4 * (cc.variance / cc.n) ** 0.5
    relative = ct.mean / cc.mean - 1
    assert abs(relative - 0.03) < 0.005
    assert 0.49 < t.units / len(users.x) < 0.51 and abs(t.requests / t.units - 3.0) < 0.02
    # Users' linearised values before and in the phase correlate as stated (control, with
    # history), so CUPED can remove about rho squared of their variance.
    have = (~users.candidate) & (users.b > 0)
    x, y, a, b = users.x[have], users.y[have], users.a[have], users.b[have]
    during, before = x - x.sum() / y.sum() * y, a - a.sum() / b.sum() * b
    assert abs(np.corrcoef(before, during)[0, 1] - world.rho) < 0.01
    assert abs(1 - have.sum() / (~users.candidate).sum() - world.new_users) < 0.005


def test_an_a_a_phase_is_rarely_rolled_back() -> None:
    assert _rates(World("A/A", 0.0))["ROLL_BACK"] <= BOUND


def test_a_candidate_at_the_success_margin_is_rarely_promoted() -> None:
    # Exactly as bad as allowed: promoting it is the error non-inferiority bounds by alpha.
    assert _rates(World("at the success margin", 0.02))["PROMOTE"] <= BOUND


def test_a_candidate_at_the_guardrail_margin_is_rarely_rolled_back() -> None:
    assert _rates(World("at the guardrail margin", 0.10))["ROLL_BACK"] <= BOUND


def test_a_better_candidate_is_promoted_sooner_with_cuped() -> None:
    # To the benchmark's horizon: a shorter one would cut off the plain rule's slow phases
    # and flatter its median.
    cadence = Cadence(peek_users=200, horizon_users=10_000)
    better = World("3% better", -0.03)
    plain = simulate(CONFIG, better, cadence, RULES["always-valid"], PHASES, seed=7)
    assert plain.rate("PROMOTE") >= 0.95 and plain.rate("ROLL_BACK") == 0
    assert cadence.peek_users <= plain.median_users_to_promote < cadence.horizon_users
    cuped = simulate(CONFIG, better, cadence, RULES["always-valid + CUPED"], PHASES, seed=7)
    assert cuped.rate("PROMOTE") >= plain.rate("PROMOTE")
    # The bar: at least 30 % fewer users. Less than the variance's 44 % (rho squared
    # on the 90 % of users with history): the always-valid radius shrinks more slowly than
    # 1 / sqrt(n) before the size it is tuned for.
    assert cuped.median_users_to_promote <= 0.7 * plain.median_users_to_promote


def test_cuped_keeps_the_error_rates() -> None:
    margin = _rates(World("at the success margin", 0.02), "always-valid + CUPED")
    guardrail = _rates(World("at the guardrail margin", 0.10), "always-valid + CUPED")
    assert margin["PROMOTE"] <= BOUND and guardrail["ROLL_BACK"] <= BOUND


def test_peeking_at_a_fixed_horizon_interval_promotes_more_often_than_alpha() -> None:
    """Why the always-valid interval: the same phases, the same looks, Welch's interval."""
    fixed = _rates(World("at the success margin", 0.02), "fixed-horizon")["PROMOTE"]
    always = _rates(World("at the success margin", 0.02))["PROMOTE"]
    assert fixed > BOUND > always


def test_the_benchmark_command_writes_its_table(tmp_path: Path) -> None:
    page = tmp_path / "bench.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.decisions", "--phases", "20", "--horizon-users",
         "1000", "--out", str(page)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = page.read_text()
    assert "## Decision quality" in table
    assert table.count("| always-valid |") == table.count("| fixed-horizon |") == 5
    assert table.count("| always-valid + CUPED |") == 5
