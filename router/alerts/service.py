"""Runs the engine periodically, records history, delivers notifications to handlers and pushes
alerts to Alertmanager from bounded queues: a slow or failing receiver never blocks evaluation
or requests, and never loses an alert from the history."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from router.alerts.alertmanager import AlertmanagerClient
from router.alerts.engine import Alert, AlertEngine, Notification, Source
from router.alerts.handlers import LogHandler, WebhookHandler
from router.alerts.history import AlertHistory
from router.alerts.settings import AlertingSettings

log = logging.getLogger(__name__)

Handler = Callable[[Notification], Awaitable[None]]


class AlertService:
    def __init__(
        self,
        settings: AlertingSettings,
        source: Source,
        clock: Callable[[], float] = time.time,
        port: int = 0,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = AlertEngine(settings, source, clock)
        self.alertmanager: AlertmanagerClient | None = None
        if settings.alertmanagers:
            replica = settings.replica or socket.gethostname()
            admin = "gamaserving.router.v1.RouterAdmin/ListAlerts"
            generator = settings.generator_url or f"grpc://{replica}:{port}/{admin}"
            self.alertmanager = AlertmanagerClient(settings, replica, generator)
        self.pushes: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(maxsize=100)
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
        if self.alertmanager is not None:
            due = self.alertmanager.take_due(self.engine, self.clock())
            if due:
                try:
                    self.pushes.put_nowait(due)
                except asyncio.QueueFull:
                    self.overflow += 1
        return notes

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._evaluate_forever()),
            loop.create_task(self._deliver_forever()),
            loop.create_task(self._push_forever()),
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

    async def _push_forever(self) -> None:
        while True:
            alerts = await self.pushes.get()
            await self.push(alerts)

    async def push(self, alerts: list[dict[str, Any]]) -> None:
        if self.alertmanager is None:
            return
        try:
            await self.alertmanager.post(alerts)
        except Exception:
            log.exception("posting to alertmanager failed")

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
        while not self.pushes.empty():
            await self.push(self.pushes.get_nowait())

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
