"""The rollout controller, the one place that decides: every `evaluation_seconds` it reads
fleet-wide statistics for each governed experiment's current phase, applies the rollout rule
and writes the coverage in force (with the decision and its numbers) to the rollout state.
It resumes from that state after a restart; replicas only read it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.metrics import CallbackOptions, Observation

from gamaserving.telemetry import Telemetry
from router.config import ConfigError, ExperimentSettings, RouterConfig, load_config
from router.experiments.results import report
from router.rollout.decide import governed, judge, start
from router.rollout.sources import SourceError, StatsSource
from router.rollout.state import Decision, RolloutState, StateError
from router.rollout.store import StateStore

log = logging.getLogger(__name__)


class ControllerMetrics:
    def __init__(self, telemetry: Telemetry) -> None:
        self._meter = meter = telemetry.meter
        self._decisions = meter.create_counter(
            "gamaserving.rollout.decisions",
            unit="{decision}",
            description="Rollout decisions by experiment and action",
        )
        self._evaluations = meter.create_counter(
            "gamaserving.rollout.evaluations",
            unit="{evaluation}",
            description="Controller evaluation rounds by outcome",
        )

    def observe(self, state: Callable[[], RolloutState]) -> None:
        """The coverage gauge, read from the controller's state whenever it is scraped."""

        def coverage(_: CallbackOptions) -> list[Observation]:
            now = state()
            return [
                Observation(
                    p.coverage,
                    {"experiment": p.experiment, "seed": p.seed, "status": p.status}
                    | (
                        {"by": now.rolled_back_by(p.experiment, p.seed) or "unknown"}
                        if p.status == "rolled_back"
                        else {}
                    ),
                )
                for p in now.phases
            ]

        self._meter.create_observable_gauge(
            "gamaserving.rollout.coverage",
            [coverage],
            unit="1",
            description="Coverage in force per experiment phase, as the controller wrote it",
        )

    def decision(self, d: Decision) -> None:
        self._decisions.add(1, {"experiment": d.experiment, "action": d.action})

    def evaluation(self, outcome: str) -> None:
        self._evaluations.add(1, {"outcome": outcome})


@dataclass
class Round:
    decisions: list[Decision]
    errors: list[str]


async def _ignore_round(result: Round) -> None:
    return None


class RolloutController:
    def __init__(
        self,
        config_path: Path,
        source: StatsSource,
        store: StateStore,
        clock: Callable[[], float] = time.time,
        metrics: ControllerMetrics | None = None,
        on_round: Callable[[Round], Awaitable[None]] | None = None,
    ) -> None:
        """`metrics` defaults to instruments nobody reads; `on_round` hears every round's
        result (the health port's readiness)."""
        self.config_path = config_path
        self.source = source
        self.store = store
        self.clock = clock
        self.metrics = metrics or ControllerMetrics(Telemetry("rollout-controller"))
        self.metrics.observe(lambda: self.state)
        self.state = RolloutState()
        self._on_round = on_round or _ignore_round

    def experiments(self) -> list[ExperimentSettings]:
        return governed_experiments(load_config(self.config_path))

    async def evaluate(self) -> Round:
        """One round over every governed experiment; writes the state when anything changed.
        A round that cannot read the configuration, the state or the statistics of an
        experiment decides nothing for it (a guess is worse than a late decision)."""
        errors: list[str] = []
        try:
            config = load_config(self.config_path)
            state = self.store.read()  # resume from what is stored, manual edits included
        except (ConfigError, StateError) as exc:
            self._count("failed")
            log.error("rollout round skipped: %s", exc, extra={"event": "rollout_error"})
            return Round([], [str(exc)])
        self.state = state
        decisions: list[Decision] = []
        outcomes = sorted(config.outcomes)
        better = {name: o.better == "higher" for name, o in config.outcomes.items()}
        for e in governed_experiments(config):
            now = self.clock()
            phase = state.phase(e.name, e.seed)
            if phase is None:
                phase, started = start(e, now)
                decisions.append(started)
                state = state.with_phase(phase, started)
            try:
                arms = await self.source.arms(e, outcomes)
            except SourceError as exc:
                errors.append(f"{e.name}: {exc}")
                log.warning(
                    "experiment %s: no fleet statistics this round: %s",
                    e.name,
                    exc,
                    extra={"event": "rollout_error", "experiment": e.name},
                )
                continue
            result = report(e, arms, better)
            phase, decision, why = judge(e, phase, result, now)
            if decision is not None:
                decisions.append(decision)
                state = state.with_phase(phase, decision)
            else:
                log.info(
                    "experiment %s (seed %s): no decision, coverage stays %g: %s",
                    e.name,
                    e.seed,
                    phase.coverage,
                    why,
                    extra={"event": "rollout_hold", "experiment": e.name, "seed": e.seed},
                )
        if state != self.state:
            try:
                self.store.write(state)
            except StateError as exc:
                self._count("failed")
                log.error("rollout state not written: %s", exc, extra={"event": "rollout_error"})
                return Round([], [*errors, str(exc)])
            self.state = state
        for d in decisions:
            self._announce(d)
        self._count("partial" if errors else "ok")
        return Round(decisions, errors)

    def _count(self, outcome: str) -> None:
        self.metrics.evaluation(outcome)

    def _announce(self, d: Decision) -> None:
        self.metrics.decision(d)
        level = logging.ERROR if d.action == "rollback" else logging.INFO
        log.log(
            level,
            "experiment %s (seed %s): %s, coverage %g -> %g: %s",
            d.experiment,
            d.seed,
            d.action,
            d.from_coverage,
            d.to_coverage,
            "; ".join(d.reasons),
            extra={
                "event": f"rollout_{d.action}",
                "experiment": d.experiment,
                "seed": d.seed,
                "from_coverage": d.from_coverage,
                "to_coverage": d.to_coverage,
                "verdict": d.verdict,
                "counts": d.counts,
            },
        )

    def period(self) -> float:
        try:
            return min((e.evaluation_seconds for e in self.experiments()), default=10.0)
        except ConfigError:
            return 10.0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            result = await self.evaluate()
            await self._on_round(result)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.period())


def manual(
    store: StateStore,
    experiment: ExperimentSettings,
    action: str,
    by: str,
    coverage: float | None = None,
    reason: str = "",
    clock: Callable[[], float] = time.time,
    resume_rolled_back: bool = False,
) -> Decision:
    """An operator's pause, resume or coverage override of the experiment's current phase,
    recorded in the history like the controller's own decisions. A rolled-back phase keeps
    coverage 0 unless `resume_rolled_back` says otherwise."""
    state = store.read()
    now = clock()
    phase = state.phase(experiment.name, experiment.seed)
    if phase is None:
        phase, _ = start(experiment, now)
    before = phase.coverage
    if phase.status == "rolled_back" and action == "override" and not resume_rolled_back:
        raise StateError(
            f"{experiment.name} (seed {experiment.seed}) was rolled back "
            f"({state.rolled_back_by(experiment.name, experiment.seed) or 'earlier'}); it stays "
            "at coverage 0 until the seed changes (a new phase). To bring this phase back, pass "
            "--resume-rolled-back as well"
        )
    if action == "pause":
        phase = phase.model_copy(update={"paused": True, "updated_at": now})
    elif action == "resume":
        phase = phase.model_copy(update={"paused": False, "updated_at": now})
    elif action == "override":
        assert coverage is not None
        status = (
            "rolled_back"
            if coverage == 0
            else ("ramping" if any(s > coverage for s in experiment.ramp) else "steady")
        )
        # An override pauses the phase, so the controller does not ramp straight past it.
        phase = phase.model_copy(
            update={"coverage": coverage, "status": status, "paused": True, "updated_at": now}
        )
    else:
        raise ValueError(f"unknown action {action!r}")
    decision = Decision.model_validate(
        {
            "at": now,
            "experiment": experiment.name,
            "seed": experiment.seed,
            "action": action,
            "from_coverage": before,
            "to_coverage": phase.coverage,
            "by": by,
            "reasons": [reason] if reason else [],
        }
    )
    store.write(state.with_phase(phase, decision))
    return decision


def governed_experiments(config: RouterConfig) -> list[ExperimentSettings]:
    """The experiments whose coverage the controller decides."""
    return [
        r.experiment
        for r in config.routes.values()
        if r.experiment is not None and governed(r.experiment)
    ]
