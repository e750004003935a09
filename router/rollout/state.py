"""The rollout state: the coverage in force per (experiment, seed), and a bounded history of
the decisions that set it, each with the numbers behind it. The rollout controller writes it;
every router replica reads it and never changes it."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, ValidationError

from gamaserving.settings import StrictSettings, field_errors

HISTORY_LIMIT = 200
Status = Literal["ramping", "steady", "rolled_back"]
"""ramping: more ramp steps to take; steady: none left (or no ramp); rolled_back: coverage 0."""
Action = Literal["start", "ramp", "rollback", "pause", "resume", "override"]


class PhaseState(StrictSettings):
    """One experiment phase: an experiment under one seed."""

    experiment: str
    seed: str
    coverage: float = Field(ge=0, le=1)
    """Coverage in force on every replica."""
    status: Status = "ramping"
    paused: bool = False
    """An operator paused it: the controller makes no decision until resumed."""
    marks: dict[str, int] = Field(default_factory=dict)
    """Fleet requests per arm when the coverage last changed (a ramp needs fresh samples)."""
    updated_at: float = 0.0
    """Unix time of the last change."""


class Decision(StrictSettings):
    at: float
    """Unix time."""
    experiment: str
    seed: str
    action: Action
    from_coverage: float
    to_coverage: float
    by: str = "controller"
    """controller, or the operator who ran a manual action."""
    verdict: str = ""
    counts: dict[str, int] = Field(default_factory=dict)
    srm_p_value: float | None = None
    reasons: list[str] = Field(default_factory=list)


class RolloutState(StrictSettings):
    version: int = 1
    phases: list[PhaseState] = Field(default_factory=list)
    history: list[Decision] = Field(default_factory=list)
    """Newest last, at most HISTORY_LIMIT."""

    def phase(self, experiment: str, seed: str) -> PhaseState | None:
        return next((p for p in self.phases if p.experiment == experiment and p.seed == seed), None)

    def with_phase(self, phase: PhaseState, decision: Decision | None = None) -> RolloutState:
        """A copy with `phase` replacing its (experiment, seed) and `decision` appended."""
        phases = [
            p for p in self.phases if (p.experiment, p.seed) != (phase.experiment, phase.seed)
        ]
        history = [*self.history, decision] if decision is not None else list(self.history)
        return RolloutState(
            version=self.version,
            phases=sorted([*phases, phase], key=lambda p: (p.experiment, p.seed)),
            history=history[-HISTORY_LIMIT:],
        )

    def rolled_back_by(self, experiment: str, seed: str) -> str:
        """Who set the phase's coverage to 0, as the ExperimentRolledBack alert says it:
        `controller (guardrails failed)` or `USER (by hand)`; empty when the history no longer
        holds the decision."""
        d = next(
            (
                d
                for d in reversed(self.history)
                if (d.experiment, d.seed) == (experiment, seed)
                and d.action in ("rollback", "override")
                and d.to_coverage == 0
            ),
            None,
        )
        if d is None:
            return ""
        return "controller (guardrails failed)" if d.action == "rollback" else f"{d.by} (by hand)"

    def last(self, experiment: str, seed: str, action: Action) -> Decision | None:
        return next(
            (
                d
                for d in reversed(self.history)
                if (d.experiment, d.seed, d.action) == (experiment, seed, action)
            ),
            None,
        )


class StateError(Exception):
    """The rollout state cannot be used; the message says why."""


def parse_state(text: str, source: str) -> RolloutState:
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise StateError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise StateError(f"{source}: expected an object")
    try:
        return RolloutState.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(field_errors(exc))
        raise StateError(f"{source}: invalid rollout state: {problems}") from exc


def dump_state(state: RolloutState) -> str:
    return json.dumps(state.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
