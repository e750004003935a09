"""Rolling quality metrics per model and check, and EWMA z-score anomaly detection on cheap
summaries (embedding norm, top score, latency)."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from router.config import AnomalySettings
from router.quality.validators import Check


@dataclass
class CheckCounts:
    total: int = 0
    failed: int = 0
    recent: deque[bool] | None = None


class QualityTracker:
    def __init__(self, recent: int = 500) -> None:
        self._recent = recent
        self.counts: dict[tuple[str, str], CheckCounts] = defaultdict(
            lambda: CheckCounts(recent=deque(maxlen=self._recent))
        )

    def record(self, model: str, checks: list[Check]) -> None:
        for check in checks:
            c = self.counts[(model, check.name)]
            c.total += 1
            c.failed += not check.passed
            assert c.recent is not None
            c.recent.append(check.passed)

    def rows(self, model: str = "") -> list[tuple[str, str, int, int, float, float]]:
        """(model, check, total, failed, pass rate, recent pass rate), sorted."""
        out = []
        for (m, name), c in sorted(self.counts.items()):
            if model and m != model:
                continue
            recent = c.recent or deque()
            out.append(
                (
                    m,
                    name,
                    c.total,
                    c.failed,
                    1 - c.failed / c.total,
                    sum(recent) / max(len(recent), 1),
                )
            )
        return out


@dataclass(frozen=True)
class Anomaly:
    model: str
    signal: str
    value: float
    zscore: float
    at: float


class EwmaDetector:
    """Exponentially weighted mean and variance; |z| above the threshold is an anomaly.
    An anomalous value does not update the baseline, so a level shift keeps alerting."""

    def __init__(self, settings: AnomalySettings) -> None:
        self.s = settings
        self.n = 0
        self.mean = 0.0
        self.var = 0.0

    def update(self, x: float) -> float | None:
        """The z-score of `x` once warmed up (None before), then learn from it if normal."""
        z = None
        if self.n >= self.s.warmup:
            z = (x - self.mean) / math.sqrt(self.var) if self.var > 0 else 0.0
            if abs(z) > self.s.threshold:
                return z
        self.n += 1
        if self.n == 1:
            self.mean = x
            return z
        delta = x - self.mean
        a = self.s.alpha if self.n > self.s.warmup else 1 / self.n
        self.mean += a * delta
        self.var = (1 - a) * (self.var + a * delta * delta)
        return z


class AnomalyMonitor:
    def __init__(
        self, settings: AnomalySettings, history: int = 200, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.detectors: dict[tuple[str, str], EwmaDetector] = {}
        self.anomalies: deque[Anomaly] = deque(maxlen=history)

    def reconfigure(self, settings: AnomalySettings) -> None:
        """New thresholds from a reload; the learned baselines are kept."""
        self.settings = settings
        for detector in self.detectors.values():
            detector.s = settings

    def observe(self, model: str, signal: str, value: float) -> Anomaly | None:
        if not math.isfinite(value):
            return None
        detector = self.detectors.setdefault((model, signal), EwmaDetector(self.settings))
        z = detector.update(value)
        if z is not None and abs(z) > self.settings.threshold:
            anomaly = Anomaly(model, signal, value, z, self._clock())
            self.anomalies.append(anomaly)
            return anomaly
        return None
