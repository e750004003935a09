"""Experiment policy on a replica: the coverage in force (the rollout state when it holds the
phase, else the configuration), and applying a new rollout state. A replica never decides
coverage; it only reads what the rollout controller wrote. Results live in the results store
(router/results/)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from router.config import ExperimentSettings
from router.rollout.state import Decision, PhaseState, RolloutState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InForce:
    coverage: float
    source: str  # "config" or "rollout"
    phase: PhaseState | None


class ExperimentPolicy:
    def __init__(self) -> None:
        self.rollout = RolloutState()
        self.state_error = ""
        """Why the last rollout state read failed; empty once a good one is applied."""

    def in_force(self, e: ExperimentSettings) -> InForce:
        phase = self.rollout.phase(e.name, e.seed)
        if phase is None:
            return InForce(e.coverage, "config", None)
        return InForce(phase.coverage, "rollout", phase)

    def effective(self, e: ExperimentSettings) -> ExperimentSettings:
        """The experiment with the coverage in force."""
        coverage = self.in_force(e).coverage
        return e if coverage == e.coverage else e.model_copy(update={"coverage": coverage})

    def rolled_back(self, e: ExperimentSettings) -> bool:
        phase = self.rollout.phase(e.name, e.seed)
        return phase is not None and phase.status == "rolled_back"

    def last(self, e: ExperimentSettings, action: str) -> Decision | None:
        return self.rollout.last(e.name, e.seed, action)  # type: ignore[arg-type]

    def apply(self, state: RolloutState) -> list[PhaseState]:
        """Make `state` the one in force; returns the phases whose coverage changed."""
        old, self.rollout = self.rollout, state
        self.state_error = ""
        changed = [
            p
            for p in state.phases
            if (before := old.phase(p.experiment, p.seed)) is None
            or (before.coverage, before.status, before.paused) != (p.coverage, p.status, p.paused)
        ]
        for p in changed:
            log.info(
                "rollout state: experiment %s (seed %s) coverage %g (%s%s)",
                p.experiment,
                p.seed,
                p.coverage,
                p.status,
                ", paused" if p.paused else "",
                extra={
                    "event": "rollout_applied",
                    "experiment": p.experiment,
                    "seed": p.seed,
                    "coverage": p.coverage,
                    "status": p.status,
                },
            )
        return changed

    def reject(self, error: str) -> None:
        """A state that could not be read or validated: keep the last good one."""
        if error != self.state_error:
            log.error(
                "rollout state rejected; keeping the last good one: %s",
                error,
                extra={"event": "rollout_state_invalid"},
            )
        self.state_error = error
