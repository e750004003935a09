"""A loaded model's lifecycle: LOADING until warm, READY, FAULTED after `fault_threshold`
consecutive failed model calls (any success, the periodic self-test's included, clears it),
DRAINING from the start of a shutdown for good. Both work loops report every model call here
(it is their CallObserver), and listeners (the health reporter) hear every change."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from enum import Enum

log = logging.getLogger(__name__)


class ModelState(Enum):
    LOADING = "loading"
    READY = "ready"
    FAULTED = "faulted"
    DRAINING = "draining"


class Lifecycle:
    def __init__(
        self,
        model: str,
        fault_threshold: int = 3,
        listeners: Sequence[Callable[[ModelState], None]] = (),
    ) -> None:
        self.model = model
        self.fault_threshold = fault_threshold
        self._listeners = tuple(listeners)
        self.state = ModelState.LOADING
        self.consecutive_faults = 0

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def set_state(self, state: ModelState) -> None:
        if state is self.state or self.state is ModelState.DRAINING:
            return
        log.info("model %s: %s -> %s", self.model, self.state.value, state.value)
        self.state = state
        for listener in self._listeners:
            listener(state)

    def call_failed(self, exc: BaseException) -> None:
        self.consecutive_faults += 1
        if self.consecutive_faults >= self.fault_threshold and self.state is ModelState.READY:
            log.error(
                "model %s: %d consecutive faults, not ready", self.model, self.consecutive_faults
            )
            self.set_state(ModelState.FAULTED)

    def call_succeeded(self) -> None:
        self.consecutive_faults = 0
        if self.state is ModelState.FAULTED:
            self.set_state(ModelState.READY)
