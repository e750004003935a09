"""grpc.health.v1 with separate liveness and readiness.

- "" and "liveness": the process, its event loop and its inference worker respond. A model
  call that runs past `stuck_after_seconds` turns it NOT_SERVING, so Kubernetes restarts the pod;
  a stuck event loop cannot answer at all, which a probe reads the same way.
- "readiness" and "inference.GRPCInferenceService": the model can serve now. NOT_SERVING while
  loading and warming up, after repeated runtime faults, and from the first moment of a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from grpc_health.v1 import health, health_pb2

from modelserver.core import InferenceCore

LIVENESS = ("", "liveness")
READINESS = ("readiness", "inference.GRPCInferenceService")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    def __init__(self, core: InferenceCore, stuck_after: float, interval: float = 0.5) -> None:
        self.servicer = health.aio.HealthServicer()
        self.core = core
        self.stuck_after = stuck_after
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._live: bool | None = None
        self._ready: bool | None = None
        self._draining = False

    async def start(self) -> None:
        await self._publish(live=True, ready=False)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="health-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def mark_draining(self) -> None:
        """Readiness goes NOT_SERVING now and for good."""
        self._draining = True
        await self.refresh()

    async def refresh(self) -> None:
        """Publish the core's current state now (also called on every state change)."""
        live = not self.core.stuck(self.stuck_after, time.monotonic())
        ready = self.core.lifecycle.ready and not self._draining
        await self._publish(live=live, ready=ready)

    async def _publish(self, live: bool, ready: bool) -> None:
        if live != self._live:
            self._live = live
            for name in LIVENESS:
                await self.servicer.set(name, SERVING if live else NOT_SERVING)
        if ready != self._ready:
            self._ready = ready
            for name in READINESS:
                await self.servicer.set(name, SERVING if ready else NOT_SERVING)

    async def _watch(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)
