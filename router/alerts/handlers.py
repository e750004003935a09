"""Alert handlers: a structured log line, and a webhook in Alertmanager's JSON format with a
timeout and tenacity retries. They run on the alert queue, never on the request path."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from router.alerts.engine import Alert, AlertState, Notification
from router.alerts.settings import WebhookSettings

log = logging.getLogger(__name__)


def iso(t: float) -> str:
    return (
        datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
        if t
        else "0001-01-01T00:00:00Z"
    )


def alertmanager_payload(alert: Alert) -> dict[str, Any]:
    """Alertmanager's webhook body (version 4) for one alert."""
    status = "resolved" if alert.state is AlertState.RESOLVED else "firing"
    labels = {"alertname": alert.name, "severity": alert.severity, **alert.labels}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alert.name}"}}',
        "status": status,
        "receiver": "gama-serving",
        "groupLabels": {"alertname": alert.name},
        "commonLabels": labels,
        "commonAnnotations": {"summary": alert.summary},
        "externalURL": "",
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": alert.summary, "value": f"{alert.value:g}"},
                "startsAt": iso(alert.started_at),
                "endsAt": iso(alert.resolved_at),
                "generatorURL": "",
                "fingerprint": alert.id,
            }
        ],
    }


class LogHandler:
    async def __call__(self, note: Notification) -> None:
        a = note.alert
        log.warning(
            "alert %s %s: %s",
            a.name,
            a.state.value,
            a.summary,
            extra={
                "event": "alert",
                "alert": a.name,
                "state": a.state.value,
                "severity": a.severity,
                "labels": a.labels,
                "value": a.value,
                "repeat": note.repeat,
                "fingerprint": a.id,
            },
        )


class HttpStatusError(Exception):
    """The receiver answered with a status other than 2xx."""


def post_json(url: str, body: bytes, timeout: float, context: ssl.SSLContext | None = None) -> None:
    """One POST of a JSON body (blocking: run it in a thread); raises on anything but 2xx."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            if not 200 <= response.status < 300:
                raise HttpStatusError(f"HTTP {response.status}")
    except urllib.error.HTTPError as exc:
        raise HttpStatusError(f"HTTP {exc.code}") from exc


class WebhookHandler:
    def __init__(self, settings: WebhookSettings, backoff: float = 0.2) -> None:
        self.settings = settings
        self.backoff = backoff
        self.delivered = 0
        self.failed = 0

    async def __call__(self, note: Notification) -> None:
        body = json.dumps(alertmanager_payload(note.alert)).encode()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.attempts),
                wait=wait_exponential(multiplier=self.backoff, max=10),
                retry=retry_if_exception_type((OSError, HttpStatusError)),
                reraise=True,
            ):
                with attempt:
                    await asyncio.to_thread(
                        post_json, self.settings.url, body, self.settings.timeout_seconds
                    )
        except (OSError, HttpStatusError) as exc:
            self.failed += 1
            log.error(
                "webhook %s failed after %d attempts: %s",
                self.settings.url,
                self.settings.attempts,
                exc,
            )
            return
        self.delivered += 1
