"""Time-bucketed quality series per model (latency percentiles, pass rate, fallback rate),
with the direction and size of each trend from a least-squares line through the buckets."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from router.config import TrendSettings

# Latency samples kept per bucket and model: enough for a p99 of one minute's traffic.
MAX_SAMPLES = 5000


@dataclass
class _Bucket:
    served: int = 0
    passed: int = 0
    first: int = 0
    fell_back: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Series:
    model: str
    metric: str
    bucket_seconds: float
    points: list[tuple[float, float, int]]  # (start, value, count)
    direction: str
    slope_per_hour: float
    relative_change: float


def trend(points: list[tuple[float, float, int]], flat_below: float) -> tuple[str, float, float]:
    """(direction, slope per hour, relative change) of the least-squares line through points."""
    if len(points) < 3:
        return "flat", 0.0, 0.0
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    slope, intercept = np.polyfit(x - x[0], y, 1)
    start, end = intercept, intercept + slope * (x[-1] - x[0])
    change = (
        (end - start) / abs(start)
        if start
        else (0.0 if end == start else float(np.sign(end - start)))
    )
    direction = "flat" if abs(change) < flat_below else ("up" if change > 0 else "down")
    return direction, float(slope * 3600), float(change)


class TrendTracker:
    def __init__(self, settings: TrendSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.buckets: dict[str, dict[int, _Bucket]] = defaultdict(dict)

    def reconfigure(self, settings: TrendSettings) -> None:
        """New settings from a reload; buckets of another width cannot be kept."""
        if settings.bucket_seconds != self.settings.bucket_seconds:
            self.buckets.clear()
        self.settings = settings

    def _bucket(self, model: str) -> _Bucket:
        index = int(self.clock() // self.settings.bucket_seconds)
        per_model = self.buckets[model]
        if index not in per_model:
            for old in [i for i in per_model if i <= index - self.settings.buckets]:
                del per_model[old]
            per_model[index] = _Bucket()
        return per_model[index]

    def record(self, first_model: str, served: str, latency_ms: float, passed: bool) -> None:
        first = self._bucket(first_model)
        first.first += 1
        first.fell_back += served != first_model
        b = self._bucket(served)
        b.served += 1
        b.passed += passed
        if len(b.latencies) < MAX_SAMPLES:
            b.latencies.append(latency_ms)

    def series(self, model: str = "") -> list[Series]:
        out = []
        size = self.settings.bucket_seconds
        for name in sorted(self.buckets):
            if model and name != model:
                continue
            ordered = sorted(self.buckets[name].items())
            metrics: dict[str, list[tuple[float, float, int]]] = {
                "latency_p50_ms": [],
                "latency_p95_ms": [],
                "latency_p99_ms": [],
                "pass_rate": [],
                "fallback_rate": [],
            }
            for index, b in ordered:
                start = index * size
                if b.latencies:
                    for q in (50, 95, 99):
                        metrics[f"latency_p{q}_ms"].append(
                            (start, float(np.percentile(b.latencies, q)), b.served)
                        )
                if b.served:
                    metrics["pass_rate"].append((start, b.passed / b.served, b.served))
                if b.first:
                    metrics["fallback_rate"].append((start, b.fell_back / b.first, b.first))
            for metric, points in metrics.items():
                if points:
                    direction, slope, change = trend(points, self.settings.flat_below)
                    out.append(Series(name, metric, size, points, direction, slope, change))
        return out
