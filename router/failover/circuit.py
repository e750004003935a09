"""A count-based circuit breaker per endpoint (resilience4j's model), with an injected clock.

CLOSED judges the last `window` calls: a failure rate or slow-call rate at or over its
threshold opens it. OPEN refuses calls for `open_seconds`, then HALF_OPEN lets
`half_open_probes` calls through: all succeed -> CLOSED, any fails -> OPEN again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import Enum

from router.config import CircuitBreakerSettings


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        settings: CircuitBreakerSettings,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State, State], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._window: deque[tuple[bool, bool]] = deque(maxlen=settings.window)
        self._opened_at = 0.0
        self._probes_out = 0
        self._probes_ok = 0

    @property
    def state(self) -> State:
        if (
            self._state is State.OPEN
            and self._clock() >= self._opened_at + self.settings.open_seconds
        ):
            self._move(State.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """Whether a call may go now; in HALF_OPEN this takes one probe permit."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and self._probes_out < self.settings.half_open_probes:
            self._probes_out += 1
            return True
        return False

    def record(self, success: bool, seconds: float) -> None:
        slow = seconds * 1000 >= self.settings.slow_call_ms
        state = self.state
        if state is State.HALF_OPEN:
            if not success or slow:
                self._open()
                return
            self._probes_ok += 1
            if self._probes_ok >= self.settings.half_open_probes:
                self._window.clear()
                self._move(State.CLOSED)
            return
        if state is State.OPEN:
            return  # a call that started before the circuit opened
        self._window.append((not success, slow))
        if len(self._window) < self.settings.min_calls:
            return
        n = len(self._window)
        failures = sum(f for f, _ in self._window) / n
        slows = sum(s for _, s in self._window) / n
        if failures >= self.settings.failure_rate or slows >= self.settings.slow_call_rate:
            self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(State.OPEN)

    def _move(self, state: State) -> None:
        old, self._state = self._state, state
        self._probes_out = self._probes_ok = 0
        if old is not state and self._on_change is not None:
            self._on_change(old, state)
