"""The lifecycle both batchers share: one asyncio task owns the queue; `close` refuses new
work while queued and running work completes; `stop` ends the task and fails what is left."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

from modelserver.errors import InferenceError, unavailable


class WorkLoop(ABC):
    name = "worker"

    def __init__(self) -> None:
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
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

    @abstractmethod
    async def _work(self) -> None: ...

    @abstractmethod
    def _fail_pending(self, error: InferenceError) -> None:
        """Fail every request still queued or running."""
