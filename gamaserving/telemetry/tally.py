"""Hot-path instruments kept as plain numbers and read when metrics are collected.

A synchronous OpenTelemetry instrument costs 5-6 us per `add` or `record` (attribute
cleaning and hashing, locks, one aggregation per reader); on a path that handles a request in
well under a millisecond that is measurable. A Tally's `add` is one dict update and a
HistogramTally's `record` one bisect and a few list updates (under a microsecond). Both are
reported at scrape or export time under the same names, units and attributes: a Tally through
an observable counter, a HistogramTally as cumulative histogram points that the metric reader
adds to what the SDK collected (gamaserving/telemetry/__init__.py)."""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Sequence

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
)


class Tally:
    def __init__(
        self, meter: Meter, name: str, unit: str, description: str, keys: tuple[str, ...]
    ) -> None:
        self.keys = keys
        self._counts: dict[tuple[str, ...], int] = {}
        meter.create_observable_counter(name, [self._observe], unit=unit, description=description)

    def add(self, *values: str) -> None:
        """One more, for the attribute values in the order of `keys`. Called on the event
        loop's thread only."""
        self._counts[values] = self._counts.get(values, 0) + 1

    def _observe(self, _: CallbackOptions) -> list[Observation]:
        # dict() copies in one C call under the GIL: safe against a concurrent `add`.
        counts = dict(self._counts)
        return [Observation(n, dict(zip(self.keys, k, strict=True))) for k, n in counts.items()]


class HistogramTally:
    """Explicit-bucket histogram series, one per tuple of attribute values (in the order of
    `keys`), with OpenTelemetry's bucket rule: bucket i holds bounds[i-1] < v <= bounds[i]."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        keys: tuple[str, ...],
        bounds: Sequence[float],
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.keys = keys
        self._bounds = tuple(bounds)
        self._started_ns = time.time_ns()
        # values -> [bucket counts..., sum, min, max], one flat list so a record is a few
        # index updates; record() and metric() share the lock, so a collection never sees a
        # count without its sum.
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._lock = threading.Lock()

    def record(self, value: float, *values: str) -> None:
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = [0] * (len(self._bounds) + 1) + [
                    0.0,
                    math.inf,
                    -math.inf,
                ]
            series[bisect_left(self._bounds, value)] += 1
            series[-3] += value
            if value < series[-2]:
                series[-2] = value
            if value > series[-1]:
                series[-1] = value

    def metric(self, now_ns: int) -> Metric | None:
        """The cumulative points so far, or None before the first record."""
        with self._lock:
            snapshot = [(k, list(v)) for k, v in self._series.items()]
        if not snapshot:
            return None
        n = len(self._bounds) + 1
        points = [
            HistogramDataPoint(
                attributes=dict(zip(self.keys, k, strict=True)),
                start_time_unix_nano=self._started_ns,
                time_unix_nano=now_ns,
                count=int(sum(v[:n])),
                sum=v[-3],
                bucket_counts=[int(c) for c in v[:n]],
                explicit_bounds=list(self._bounds),
                min=v[-2],
                max=v[-1],
                exemplars=[],
            )
            for k, v in snapshot
        ]
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(
                data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE
            ),
        )
