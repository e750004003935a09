"""The backends' reconnect waits: exponential from the first wait to the cap, with jitter."""

from __future__ import annotations

import random

from tenacity import RetryCallState

from router.backends.reconnect import reconnect_wait


def _waits(attempt: int, samples: int = 200) -> list[float]:
    wait = reconnect_wait(0.2, 2.0)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return [wait(state) for _ in range(samples)]


def test_waits_double_up_to_the_cap_with_jitter() -> None:
    random.seed(3)
    for attempt, base in ((1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6)):
        waits = _waits(attempt)
        assert all(base <= w <= base + 0.2 for w in waits)
        assert max(waits) - min(waits) > 0.1  # jittered: replicas do not reconnect in step
    assert all(w <= 2.0 for w in _waits(9))
