"""A count-based circuit breaker per endpoint (resilience4j's model), with an injected clock.

CLOSED judges the last `window` calls: a failure rate or slow-call rate at or over its
threshold opens it. OPEN refuses calls for `open_seconds`; the first
`try_acquire_permission()` after that half-opens it. HALF_OPEN lets `half_open_probes` calls
through: all succeed -> CLOSED, any fails -> OPEN again. A probe permit taken and not used is
given back with `release()`, and HALF_OPEN that has not decided within `half_open_max_seconds`
opens again (resilience4j's `releasePermission` and `maxWaitDurationInHalfOpenState`), so a
permit lost to a cancelled caller can never keep the endpoint out of service for good.

The three questions, each its own method: `try_acquire_permission()` (may a call go now? takes
a probe permit when half-open), `in_service()` (is the endpoint in service or about to be
probed? readiness asks this) and `is_closed()` (for shadow copies, which never take a probe).
Reading `state` never changes it: transitions happen only in `try_acquire_permission()` and
`record()`.
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
        on_change: Callable[[State, State], None] = lambda old, new: None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._window: deque[tuple[bool, bool]] = deque(maxlen=settings.window)
        self._since = 0.0  # when the current state began
        self._probes_out = 0
        self._probes_ok = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def probes_out(self) -> int:
        """Half-open permits taken and not yet recorded or released."""
        return self._probes_out

    def try_acquire_permission(self) -> bool:
        """Whether a call may go now; in HALF_OPEN this takes one probe permit, which the
        caller must settle with `record()` or give back with `release()`."""
        now = self._clock()
        if self._state is State.OPEN and now >= self._since + self.settings.open_seconds:
            self._move(State.HALF_OPEN)
        elif (
            self._state is State.HALF_OPEN
            and now >= self._since + self.settings.half_open_max_seconds
        ):
            self._open()
        if self._state is State.CLOSED:
            return True
        if self._state is State.HALF_OPEN and self._probes_out < self.settings.half_open_probes:
            self._probes_out += 1
            return True
        return False

    def in_service(self) -> bool:
        """Whether the endpoint is in service or about to be probed, without taking a permit
        or moving (readiness asks this): only an OPEN circuit still waiting is out."""
        if self._state is State.OPEN:
            return self._clock() >= self._since + self.settings.open_seconds
        return True

    def back_in_service_in(self) -> float | None:
        """Seconds until an OPEN circuit's wait ends and `in_service()` turns true by itself
        (readiness wakes up then); None when nothing is waiting."""
        if self._state is not State.OPEN:
            return None
        return max(self._since + self.settings.open_seconds - self._clock(), 0.0)

    def is_closed(self) -> bool:
        """Whether the circuit is CLOSED, without taking anything (for shadow copies, which
        must never use a probe meant for real traffic)."""
        return self._state is State.CLOSED

    def release(self) -> None:
        """Give back a permit from `try_acquire_permission()` whose call never produced an
        outcome."""
        if self._state is State.HALF_OPEN and self._probes_out > self._probes_ok:
            self._probes_out -= 1

    def record(self, success: bool, seconds: float) -> None:
        slow = seconds * 1000 >= self.settings.slow_call_ms
        if self._state is State.HALF_OPEN:
            if not success or slow:
                self._open()
                return
            self._probes_ok += 1
            if self._probes_ok >= self.settings.half_open_probes:
                self._window.clear()
                self._move(State.CLOSED)
            return
        if self._state is State.OPEN:
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
        self._move(State.OPEN)

    def _move(self, state: State) -> None:
        old, self._state = self._state, state
        self._since = self._clock()
        self._probes_out = self._probes_ok = 0
        if old is not state:
            self._on_change(old, state)
