"""The lifecycle both work loops share (the batcher and the generation scheduler): one asyncio
task owns the queue and all its state; the model runs on the single inference thread and only
returns values, which the task applies. `close` refuses new work while queued and running work
completes; `stop` ends the task and fails what is left. A failed model call is handled here,
once for both loops: counted, logged, told to the observer, turned into an InferenceError."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol, TypeVar

import grpc

from modelserver.errors import InferenceError, unavailable

log = logging.getLogger(__name__)

R = TypeVar("R")


class CallObserver(Protocol):
    """Hears how each model call ended (the model's lifecycle counts consecutive faults)."""

    def call_failed(self, exc: BaseException) -> None: ...

    def call_succeeded(self) -> None: ...


class Unobserved:
    def call_failed(self, exc: BaseException) -> None:
        pass

    def call_succeeded(self) -> None:
        pass


UNOBSERVED = Unobserved()


class WorkLoop(ABC):
    name = "worker"

    def __init__(
        self, executor: Executor, clock: Callable[[], float], observer: CallObserver
    ) -> None:
        self._executor = executor
        self._clock = clock
        self._observer = observer
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.faults = 0
        self.busy_since: float | None = None
        """When the model call under way began (liveness reads it); None when idle."""

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=self.name)

    def close(self) -> None:
        """Refuse new work; queued and running work still completes."""
        self._closed = True

    async def stop(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._fail_pending(unavailable("the model server is shutting down"))

    async def _call_model(self, what: str, rows: int, fn: Callable[..., R], *args: object) -> R:
        """`fn(*args)` on the inference thread. A failure is handled once, here, and raised as
        the InferenceError every request of the call gets."""
        self.busy_since = self._clock()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except Exception as exc:
            self.faults += 1
            log.exception("model call failed %s (%d rows)", what, rows)
            self._observer.call_failed(exc)
            if isinstance(exc, InferenceError):
                raise
            raise InferenceError(
                grpc.StatusCode.INTERNAL, f"the model failed {what}: {type(exc).__name__}"
            ) from exc
        finally:
            self.busy_since = None
        self._observer.call_succeeded()
        return result

    @abstractmethod
    async def _work(self) -> None: ...

    @abstractmethod
    def _fail_pending(self, error: InferenceError) -> None:
        """Fail every request still queued or running."""
