"""The alert state machine, with an injected clock so tests step time instead of sleeping.

Per (rule, labels): inactive -> pending (condition true) -> firing (held for `for_seconds`)
-> resolved (condition false). Notifications go out on firing, on resolving and every
`repeat_seconds` while firing; an inhibited alert is tracked but not notified; a rate limit
caps notifications. Every transition is recorded in the history.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from router.alerts.settings import RULE_FAILING, AlertingSettings, AlertRule, Signal

log = logging.getLogger(__name__)

Sample = tuple[dict[str, str], float]
Source = Callable[[Signal], list[Sample]]
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class AlertState(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Alert:
    id: str
    name: str
    labels: dict[str, str]
    severity: str
    state: AlertState
    summary: str
    value: float
    started_at: float
    resolved_at: float = 0.0
    acknowledged_by: str = ""


@dataclass
class _Active:
    alert: Alert
    pending_since: float
    last_notified: float = 0.0


@dataclass
class Notification:
    alert: Alert
    repeat: bool = False


def fingerprint(name: str, labels: dict[str, str]) -> str:
    """Dedupe key: the same name and labels are the same alert."""
    text = name + "".join(f"\0{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _summary(rule: AlertRule, labels: dict[str, str], value: float) -> str:
    try:
        return rule.summary.format(value=value, **labels) if rule.summary else rule.name
    except (KeyError, ValueError):
        return rule.summary


@dataclass
class AlertEngine:
    settings: AlertingSettings
    source: Source
    clock: Callable[[], float] = time.time
    active: dict[str, _Active] = field(default_factory=dict)
    transitions: list[Alert] = field(default_factory=list)
    dropped: int = 0
    rule_failures: Counter[str] = field(default_factory=Counter)
    """Passes in which a rule's signal raised, by rule name."""
    _sent: deque[float] = field(default_factory=deque)

    def evaluate(self) -> list[Notification]:
        """One evaluation of every rule; returns what should be notified now. A rule whose
        signal raises is skipped for this pass (its alerts hold as they were) and raises
        AlertRuleFailing; every other rule fires and resolves as usual."""
        now = self.clock()
        self.transitions = []
        notes: list[Notification] = []
        seen: set[str] = set()
        failing: list[AlertRule] = []
        for rule in self.settings.rules:
            try:
                samples = self.source(rule.signal)
            except Exception:
                log.exception("alert rule %s: its signal %s failed", rule.name, rule.signal)
                self.rule_failures[rule.name] += 1
                failing.append(rule)
                seen |= {k for k, e in self.active.items() if e.alert.name == rule.name}
                continue
            notes += self._apply(rule, samples, seen, now)
        failures = [({"rule": r.name, "signal": r.signal}, 1.0) for r in failing]
        notes += self._apply(RULE_FAILING, failures, seen, now)
        for key in list(self.active):
            if key not in seen:
                notes += self._clears(key, now)
        return [n for n in notes if not self._inhibited(n.alert) and self._admit(now)]

    def _apply(
        self, rule: AlertRule, samples: list[Sample], seen: set[str], now: float
    ) -> list[Notification]:
        notes: list[Notification] = []
        for labels, value in samples:
            labels = {**labels, **rule.labels}
            key = fingerprint(rule.name, labels)
            if OPS[rule.op](value, rule.threshold):
                seen.add(key)
                notes += self._holds(rule, key, labels, value, now)
        return notes

    def firing(self) -> list[Alert]:
        """The alerts firing now (inhibited ones included)."""
        return [e.alert for e in self.active.values() if e.alert.state is AlertState.FIRING]

    def _holds(
        self, rule: AlertRule, key: str, labels: dict[str, str], value: float, now: float
    ) -> list[Notification]:
        entry = self.active.get(key)
        summary = _summary(rule, labels, value)
        if entry is None:
            alert = Alert(
                key, rule.name, labels, rule.severity, AlertState.PENDING, summary, value, now
            )
            entry = self.active[key] = _Active(alert, now)
            self._record(alert)
        entry.alert = replace(entry.alert, value=value, summary=summary)
        if (
            entry.alert.state is AlertState.PENDING
            and now - entry.pending_since >= rule.for_seconds
        ):
            entry.alert = replace(entry.alert, state=AlertState.FIRING, started_at=now)
            entry.last_notified = now
            self._record(entry.alert)
            return [Notification(entry.alert)]
        if (
            entry.alert.state is AlertState.FIRING
            and now - entry.last_notified >= self.settings.repeat_seconds
        ):
            entry.last_notified = now
            return [Notification(entry.alert, repeat=True)]
        return []

    def _clears(self, key: str, now: float) -> list[Notification]:
        entry = self.active.pop(key)
        if entry.alert.state is not AlertState.FIRING:
            return []  # pending never fired: nothing to resolve
        resolved = replace(entry.alert, state=AlertState.RESOLVED, resolved_at=now)
        self._record(resolved)
        return [Notification(resolved)]

    def _inhibited(self, alert: Alert) -> bool:
        for rule in self.settings.inhibit:
            if alert.name != rule.target:
                continue
            for entry in self.active.values():
                source = entry.alert
                if (
                    source.name == rule.source
                    and source.state is AlertState.FIRING
                    and all(source.labels.get(k) == alert.labels.get(k) for k in rule.equal)
                ):
                    return True
        return False

    def _admit(self, now: float) -> bool:
        while self._sent and self._sent[0] <= now - 60:
            self._sent.popleft()
        if len(self._sent) >= self.settings.max_notifications_per_minute:
            self.dropped += 1
            return False
        self._sent.append(now)
        return True

    def _record(self, alert: Alert) -> None:
        self.transitions.append(alert)
