"""Bounded alert history, kept in an SQLite file when configured so it survives restarts."""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from router.alerts.engine import Alert, AlertState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, name TEXT, labels TEXT, severity TEXT, state TEXT, summary TEXT,
    value REAL, started_at REAL, resolved_at REAL, acknowledged_by TEXT, updated INTEGER
)
"""


class AlreadyAcknowledged(Exception):
    """An alert someone acknowledged before: who did stays on record."""

    def __init__(self, alert: Alert) -> None:
        super().__init__(f"alert {alert.id} was already acknowledged by {alert.acknowledged_by}")
        self.alert = alert


class AlertHistory:
    """The latest state of each alert (by fingerprint and start), newest last, bounded."""

    def __init__(self, size: int, path: Path | str | None = None) -> None:
        self.size = size
        self.items: OrderedDict[str, Alert] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        self._seq = 0
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path)
            self._db.execute(_SCHEMA)
            rows = self._db.execute(
                "SELECT id, name, labels, severity, state, summary, value, started_at, resolved_at,"
                " acknowledged_by, updated FROM alerts ORDER BY updated"
            ).fetchall()
            for row in rows[-size:]:
                alert = Alert(
                    row[0].split("@")[0],
                    row[1],
                    json.loads(row[2]),
                    row[3],
                    AlertState(row[4]),
                    row[5],
                    row[6],
                    row[7],
                    row[8],
                    row[9],
                )
                self.items[row[0]] = alert
                self._seq = max(self._seq, row[10])

    @staticmethod
    def _key(alert: Alert) -> str:
        # One history entry per occurrence: the same alert firing again later is a new entry.
        return (
            f"{alert.id}@{alert.started_at if alert.state is not AlertState.PENDING else 'pending'}"
        )

    def record(self, alert: Alert) -> None:
        if alert.state is AlertState.FIRING:
            self.items.pop(f"{alert.id}@pending", None)
            self._delete(f"{alert.id}@pending")
        key = self._key(alert)
        previous = self.items.pop(key, None)
        if previous is not None and previous.acknowledged_by:
            alert = replace(alert, acknowledged_by=previous.acknowledged_by)
        self.items[key] = alert
        while len(self.items) > self.size:
            old, _ = self.items.popitem(last=False)
            self._delete(old)
        self._write(key, alert)

    def acknowledge(self, alert_id: str, by: str) -> Alert | None:
        """Record who acknowledged the alert; the first acknowledgement stands
        (AlreadyAcknowledged for a second one)."""
        for key in reversed(self.items):
            if key.split("@")[0] == alert_id:
                if self.items[key].acknowledged_by:
                    raise AlreadyAcknowledged(self.items[key])
                alert = replace(self.items[key], acknowledged_by=by or "someone")
                self.items[key] = alert
                self._write(key, alert)
                return alert
        return None

    def list(self, include_resolved: bool, limit: int) -> list[Alert]:
        alerts = [
            a
            for a in reversed(self.items.values())
            if include_resolved or a.state is not AlertState.RESOLVED
        ]
        return alerts[:limit] if limit > 0 else alerts

    def _write(self, key: str, a: Alert) -> None:
        if self._db is None:
            return
        self._seq += 1
        self._db.execute(
            "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                a.name,
                json.dumps(a.labels, sort_keys=True),
                a.severity,
                a.state.value,
                a.summary,
                a.value,
                a.started_at,
                a.resolved_at,
                a.acknowledged_by,
                self._seq,
            ),
        )
        self._db.commit()

    def _delete(self, key: str) -> None:
        if self._db is not None:
            self._db.execute("DELETE FROM alerts WHERE id = ?", (key,))
            self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
