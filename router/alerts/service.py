"""Runs the engine periodically, records history, and delivers notifications to handlers from
a bounded queue: a slow or failing handler never blocks evaluation or requests, and never
loses an alert from the history."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from router.alerts.engine import Alert, AlertEngine, Notification, Source
from router.alerts.handlers import LogHandler, WebhookHandler
from router.alerts.history import AlertHistory
from router.alerts.settings import AlertingSettings

log = logging.getLogger(__name__)

Handler = Callable[[Notification], Awaitable[None]]


class AlertService:
    def __init__(
        self, settings: AlertingSettings, source: Source, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.engine = AlertEngine(settings, source, clock)
        self.history = AlertHistory(settings.history_size, settings.history_path)
        self.webhook = WebhookHandler(settings.webhook) if settings.webhook else None
        self.handlers: list[Handler] = [LogHandler()] + ([self.webhook] if self.webhook else [])
        self.queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=1000)
        self.overflow = 0
        self._tasks: list[asyncio.Task[None]] = []

    def evaluate(self) -> list[Notification]:
        notes = self.engine.evaluate()
        for alert in self.engine.transitions:
            self.history.record(alert)
        for note in notes:
            try:
                self.queue.put_nowait(note)
            except asyncio.QueueFull:
                self.overflow += 1
        return notes

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._evaluate_forever()),
            loop.create_task(self._deliver_forever()),
        ]

    async def _evaluate_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.evaluation_seconds)
            try:
                self.evaluate()
            except Exception:
                log.exception("alert evaluation failed")

    async def _deliver_forever(self) -> None:
        while True:
            note = await self.queue.get()
            await self.deliver(note)

    async def deliver(self, note: Notification) -> None:
        for handler in self.handlers:
            try:
                await handler(note)
            except Exception:
                log.exception("alert handler failed")

    async def drain(self) -> None:
        """Deliver whatever is queued (used by tests and at shutdown)."""
        while not self.queue.empty():
            await self.deliver(self.queue.get_nowait())

    def list(self, include_resolved: bool, limit: int) -> list[Alert]:
        return self.history.list(include_resolved, limit)

    def acknowledge(self, alert_id: str, by: str) -> Alert | None:
        return self.history.acknowledge(alert_id, by)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.history.close()
