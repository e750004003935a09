"""A circuit breaker on a hand-moved clock that remembers its state changes."""

from __future__ import annotations

from router.config import CircuitBreakerSettings
from router.failover.circuit import CircuitBreaker, State
from tests.support.fakes import Clock


def breaker(**kw: float) -> tuple[CircuitBreaker, Clock, list[tuple[State, State]]]:
    clock = Clock()
    changes: list[tuple[State, State]] = []
    settings = CircuitBreakerSettings.model_validate(
        {"window": 10, "min_calls": 4, "open_seconds": 5, "half_open_probes": 2, **kw}
    )
    return CircuitBreaker(settings, clock, lambda a, b: changes.append((a, b))), clock, changes
