"""The one place a routed request's outcome is recorded: request counts and latencies,
fallbacks, metrics, trends, the experiment arm's results, quality and anomalies."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gamaserving.oip import ModelOutput
from router.config import AnomalySettings, TrendSettings
from router.failover.circuit import State
from router.metrics import RouterMetrics
from router.quality.tracker import AnomalyMonitor, QualityTracker
from router.quality.trends import TrendTracker
from router.quality.validators import Check
from router.record import RouteResult

log = logging.getLogger(__name__)


@dataclass
class RouterStats:
    requests: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """(model, arm, task, outcome) -> count."""
    fallbacks: Counter[str] = field(default_factory=Counter)
    fallbacks_from: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(chosen model, reason) -> requests another model served."""
    validated: Counter[str] = field(default_factory=Counter)
    """model -> outputs validated."""
    quality_failed: Counter[str] = field(default_factory=Counter)
    """model -> outputs that failed at least one check."""
    latencies: deque[tuple[float, str, float]] = field(default_factory=lambda: deque(maxlen=20_000))
    """(time, model, ms) of recent requests, for latency percentiles over a window."""
    circuit_changes: Counter[tuple[str, str, str]] = field(default_factory=Counter)


class Recorder:
    def __init__(
        self,
        metrics: RouterMetrics,
        exposures: Callable[[RouteResult], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.stats = RouterStats()
        self.quality = QualityTracker()
        self.anomalies = AnomalyMonitor(AnomalySettings())
        self.trends = TrendTracker(TrendSettings())
        self.metrics = metrics
        self._exposures = exposures
        """Where every routed request goes: the results store's writer, when the router has
        one (every configuration with experiments does)."""

    def configure(self, anomaly: AnomalySettings, trends: TrendSettings) -> None:
        """Settings from the configuration in force (at start and on every reload)."""
        if anomaly != self.anomalies.settings:
            self.anomalies.reconfigure(anomaly)
        if trends != self.trends.settings:
            self.trends.reconfigure(trends)

    def routed(self, r: RouteResult) -> None:
        arm = r.assignment.arm if r.assignment else ""
        if r.error is not None:
            self._count(r.first_model, arm, r.task, r.status.name.lower(), r.total_ms)
            # The caller's own faults are theirs to see; the rest are the operator's.
            log.log(
                logging.INFO if r.callers_fault else logging.WARNING,
                "request %s failed: %s: %s",
                r.request_id,
                r.status.name,
                r.error.message,
                extra={
                    "event": "request_failed",
                    "request_id": r.request_id,
                    "task": r.task,
                    "model": r.first_model,
                    "status": r.status.name,
                },
            )
        else:
            served, quality_failed = r.served_model, bool(r.failed_checks)
            outcome = "quality_failed" if quality_failed else "ok"
            self._count(served, arm, r.task, outcome, r.total_ms)
            self.stats.latencies.append((self.clock(), served, r.total_ms))
            self.trends.record(r.first_model, served, r.total_ms, not quality_failed)
            if r.assignment is not None:
                self.metrics.exposure(r.assignment.experiment, r.assignment.arm)
            if r.fallback_used:
                self._fallback(r)
            output = r.output
            if output.output_tokens:
                self.metrics.tokens(served, output.input_tokens, output.output_tokens)
        # The experiment's exposure: the results store is where its statistics come from.
        self._exposures(r)

    def _fallback(self, r: RouteResult) -> None:
        reason = r.fallback_reason
        self.stats.fallbacks[reason] += 1
        self.stats.fallbacks_from[(r.first_model, reason)] += 1
        self.metrics.fallback(reason, r.first_model, r.served_model)
        log.warning(
            "fallback %s -> %s (%s)",
            r.first_model,
            r.served_model,
            reason,
            extra={
                "event": "fallback",
                "request_id": r.request_id,
                "task": r.task,
                "from_model": r.first_model,
                "to_model": r.served_model,
                "reason": reason,
            },
        )

    def _count(self, model: str, arm: str, task: str, outcome: str, latency_ms: float) -> None:
        self.stats.requests[(model, arm, task, outcome)] += 1
        self.metrics.request(model, arm, task, outcome, latency_ms / 1000)

    def checked(
        self, model: str, output: ModelOutput, checks: list[Check], latency_ms: float
    ) -> None:
        """One validated output (every attempt's, not only the one returned)."""
        self.quality.record(model, checks)
        self.stats.validated[model] += 1
        if any(not c.passed for c in checks):
            self.stats.quality_failed[model] += 1
        for check in checks:
            if not check.passed:
                self.metrics.quality_failure(model, check.name)
        signals = {"latency_ms": latency_ms}
        if output.features is not None and output.features.size:
            signals["embedding_norm"] = float(np.linalg.norm(output.features))
        if output.scores:
            signals["top_score"] = float(output.scores[0])
        for signal, value in signals.items():
            if self.anomalies.observe(model, signal, value) is not None:
                self.metrics.anomaly(model, signal)

    def circuit_changed(self, model: str, target: str, old: State, new: State) -> None:
        self.stats.circuit_changes[(model, target, new.value)] += 1
        log.warning(
            "circuit %s %s: %s -> %s",
            model,
            target,
            old.value,
            new.value,
            extra={"event": "circuit", "model": model, "endpoint": target, "state": new.value},
        )

    def shadow(self, primary: str, shadow: str, outcome: str) -> None:
        self.metrics.shadow(primary, shadow, outcome)
