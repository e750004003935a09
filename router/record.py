"""One routed request, recorded once: the response, the recorder (and through it the metrics,
trends, experiment results and alert signals) and the spans all read this value, so they can
never disagree about what happened (which model served, whether it was a fallback, why)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from gamaserving.oip import ModelOutput
from router.config import ExperimentSettings
from router.errors import RouteError
from router.experiments.assignment import Assignment
from router.experiments.segments import RequestFacts
from router.failover.dispatch import Attempt, Outcome
from router.quality.validators import Check


@dataclass(frozen=True)
class RouteResult:
    request_id: str
    task: str
    first_model: str
    """The model assignment chose (or the route's primary): the one asked first."""
    unit: str
    """What experiments randomise: the user id, or the request id when there is none."""
    assignment: Assignment | None
    experiment: ExperimentSettings | None
    total_ms: float
    """Time in the router, from routing to the answer or the error."""
    attempts: tuple[Attempt, ...] = ()
    answer: Attempt | None = None
    """The attempt whose answer went back; None when the request failed."""
    error: RouteError | None = None
    shadowed: bool = False
    facts: RequestFacts = field(default_factory=RequestFacts)
    """What the experiment's dimensions read of the request (its metadata, the clip's
    length); the answering model's version comes with `answer`."""

    @property
    def served_model(self) -> str:
        """The model that answered; empty when none did."""
        return self.answer.model if self.answer else ""

    @property
    def output(self) -> ModelOutput:
        assert self.answer is not None and self.answer.output is not None
        return self.answer.output

    @property
    def fallback_used(self) -> bool:
        """Another model than the first answered. A retry on another endpoint of the same
        model is a retry (it shows in `attempts`), not a fallback."""
        return bool(self.served_model) and self.served_model != self.first_model

    @property
    def fallback_reason(self) -> str:
        """Why the first model did not answer (its first attempt that was not ok)."""
        if not self.fallback_used:
            return ""
        return next((a.reason for a in self.attempts if a.outcome is not Outcome.OK), "")

    @property
    def checks(self) -> tuple[Check, ...]:
        return self.answer.checks if self.answer else ()

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def model_ms(self) -> float:
        return self.answer.duration_ms if self.answer else 0.0

    @property
    def callers_fault(self) -> bool:
        """INVALID_ARGUMENT: it does not count against a model or an arm."""
        return self.error is not None and self.error.code is grpc.StatusCode.INVALID_ARGUMENT

    @property
    def status(self) -> grpc.StatusCode:
        return self.error.code if self.error else grpc.StatusCode.OK
