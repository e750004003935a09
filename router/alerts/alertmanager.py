"""Alerts to Alertmanager's API (`POST /api/v2/alerts`), the way Prometheus sends them.

Every firing alert is posted when it fires and again every `resend_seconds` while it fires,
with endsAt = now + 4 x resend_seconds, so Alertmanager keeps it active while this replica is
alive and resolves it by itself if the replica dies; a resolved alert is posted once with
endsAt set to when it resolved. Alertmanager then groups, routes, silences and inhibits; the
router's own inhibition and rate limit apply to its local handlers only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from router.alerts.engine import Alert, AlertEngine, AlertState
from router.alerts.handlers import HttpStatusError, iso, post_json
from router.alerts.settings import AlertingSettings, AlertRule

log = logging.getLogger(__name__)

ENDS_AFTER_RESENDS = 4  # Prometheus: endsAt = now + 4 x max(resend delay, evaluation interval)


def description(rule: AlertRule | None, alert: Alert, replica: str) -> str:
    if rule is not None and rule.description:
        try:
            return rule.description.format(value=alert.value, **alert.labels)
        except (KeyError, ValueError):
            return rule.description
    if rule is None:
        return alert.summary
    return (
        f"{rule.signal} {rule.op} {rule.threshold:g} for {rule.for_seconds:g} s "
        f"(now {alert.value:g}), evaluated by router replica {replica}"
    )


class AlertmanagerClient:
    def __init__(
        self, settings: AlertingSettings, replica: str, generator_url: str, backoff: float = 0.5
    ) -> None:
        self.urls = [url.rstrip("/") + "/api/v2/alerts" for url in settings.alertmanagers]
        self.settings = settings.alertmanager
        self.rules = {rule.name: rule for rule in settings.rules}
        self.replica = replica
        self.generator_url = generator_url
        self.backoff = backoff
        tls = self.settings.tls
        self.context: ssl.SSLContext | None = tls.ssl_context() if tls is not None else None
        self.sent_at: dict[str, float] = {}
        self.posted = 0
        self.failed = 0

    def payload(self, alert: Alert, now: float) -> dict[str, Any]:
        resolved = alert.state is AlertState.RESOLVED
        ends = alert.resolved_at if resolved else now + ENDS_AFTER_RESENDS * self.resend
        labels = {
            "alertname": alert.name,
            "severity": alert.severity,
            "replica": self.replica,
            **alert.labels,
        }
        return {
            "labels": labels,
            "annotations": {
                "summary": alert.summary,
                "description": description(self.rules.get(alert.name), alert, self.replica),
            },
            "startsAt": iso(alert.started_at),
            "endsAt": iso(ends),
            "generatorURL": self.generator_url,
        }

    @property
    def resend(self) -> float:
        return self.settings.resend_seconds

    def take_due(self, engine: AlertEngine, now: float) -> list[dict[str, Any]]:
        """What to post after an evaluation: resolutions once, each firing alert when it fires
        and every `resend_seconds` after."""
        due = []
        for alert in engine.transitions:
            if alert.state is AlertState.RESOLVED and self.sent_at.pop(alert.id, None) is not None:
                due.append(self.payload(alert, now))
        for alert in engine.firing():
            if now - self.sent_at.get(alert.id, -float("inf")) >= self.resend:
                self.sent_at[alert.id] = now
                due.append(self.payload(alert, now))
        return due

    async def post(self, alerts: list[dict[str, Any]]) -> None:
        body = json.dumps(alerts).encode()
        await asyncio.gather(*(self._post_one(url, body) for url in self.urls))

    async def _post_one(self, url: str, body: bytes) -> None:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.attempts),
                wait=wait_exponential_jitter(multiplier=self.backoff, max=10, jitter=self.backoff),
                retry=retry_if_exception_type((OSError, HttpStatusError)),
                reraise=True,
            ):
                with attempt:
                    await asyncio.to_thread(
                        post_json, url, body, self.settings.timeout_seconds, self.context
                    )
        except (OSError, HttpStatusError) as exc:
            self.failed += 1
            log.error(
                "alertmanager %s refused %d alerts after %d attempts: %s",
                url,
                len(json.loads(body)),
                self.settings.attempts,
                exc,
                extra={"event": "alertmanager_failed", "url": url},
            )
            return
        self.posted += 1
