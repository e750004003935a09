"""Trend series in the quality report, on an injected clock."""

from __future__ import annotations

import pytest

from router.config import TrendSettings
from router.quality.trends import TrendTracker, trend
from tests.support.fakes import Clock


def test_series_show_direction_and_size() -> None:
    clock = Clock(60_000.0)
    tracker = TrendTracker(TrendSettings(bucket_seconds=60, buckets=30), clock)
    for minute in range(10):
        for i in range(20):
            latency = 100 + 10 * minute + i % 3  # slower every minute
            fell_back = i < minute  # more fallbacks every minute
            tracker.record("gama", "wav2vec2" if fell_back else "gama", latency, passed=True)
        clock.now += 60
    series = {(s.model, s.metric): s for s in tracker.series()}
    p50 = series[("gama", "latency_p50_ms")]
    assert len(p50.points) == 10 and p50.direction == "up"
    assert p50.slope_per_hour == pytest.approx(600, rel=0.05)  # +10 ms a minute
    assert p50.relative_change == pytest.approx(90 / 101, rel=0.05)
    assert series[("gama", "pass_rate")].direction == "flat"
    fallback = series[("gama", "fallback_rate")]
    assert (
        fallback.direction == "up"
        and fallback.points[0][1] == 0.0
        and fallback.points[-1][1] == 9 / 20
    )
    assert series[("wav2vec2", "latency_p95_ms")].points  # the fallback model gets its own series
    assert {s.model for s in tracker.series("wav2vec2")} == {"wav2vec2"}


def test_old_buckets_are_dropped() -> None:
    clock = Clock(60_000.0)
    tracker = TrendTracker(TrendSettings(bucket_seconds=10, buckets=3), clock)
    for _ in range(6):
        tracker.record("m", "m", 5.0, passed=False)
        clock.now += 10
    (pass_rate,) = [s for s in tracker.series() if s.metric == "pass_rate"]
    assert len(pass_rate.points) == 3 and pass_rate.points[-1][1] == 0.0


def test_trend_edge_cases() -> None:
    assert trend([(0, 1.0, 1), (60, 2.0, 1)], 0.05) == ("flat", 0.0, 0.0)  # too few points
    assert trend([(0, 5.0, 1), (60, 4.0, 1), (120, 3.0, 1)], 0.05)[0] == "down"
    assert trend([(0, 0.0, 1), (60, 0.0, 1), (120, 0.0, 1)], 0.05) == ("flat", 0.0, 0.0)
