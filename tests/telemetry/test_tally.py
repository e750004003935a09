"""The hot-path histogram agrees with the OpenTelemetry SDK's explicit-bucket aggregation."""

from __future__ import annotations

import threading

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from gamaserving.telemetry import SECONDS_BUCKETS
from gamaserving.telemetry.tally import HistogramTally

# Values on bucket bounds, between them, below the first and beyond the last.
VALUES = [0.0, 0.0005, 0.0007, 0.001, 0.004, 0.01, 0.2, 0.25, 7.0, 30.0, 31.0, 0.0005]


def _sdk_points(values: list[tuple[float, dict[str, str]]]) -> dict[str, HistogramDataPoint]:
    reader = InMemoryMetricReader()
    view = View(
        instrument_name="d", aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS)
    )
    provider = MeterProvider(metric_readers=[reader], views=[view])
    histogram = provider.get_meter("t").create_histogram("d", unit="s")
    for value, attributes in values:
        histogram.record(value, attributes)
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
    provider.shutdown()
    return {str(p.attributes["model"]): p for p in metric.data.data_points}  # type: ignore[union-attr]


def test_buckets_count_sum_min_max_match_the_sdk() -> None:
    tally = HistogramTally("d", "s", "test", ("model",), SECONDS_BUCKETS)
    assert tally.metric(0) is None  # nothing to report before the first value
    recorded = [(v, {"model": "a"}) for v in VALUES] + [(0.003, {"model": "b"})]
    for value, attributes in recorded:
        tally.record(value, attributes["model"])
    metric = tally.metric(123)
    assert metric is not None and (metric.name, metric.unit) == ("d", "s")
    ours = {str(p.attributes["model"]): p for p in metric.data.data_points}  # type: ignore[union-attr]
    sdk = _sdk_points(recorded)
    assert ours.keys() == sdk.keys() == {"a", "b"}
    for model, want in sdk.items():
        got = ours[model]
        assert list(got.bucket_counts) == list(want.bucket_counts), model
        assert list(got.explicit_bounds) == list(want.explicit_bounds)
        assert (got.count, got.min, got.max) == (want.count, want.min, want.max)
        assert abs(got.sum - want.sum) < 1e-12
        assert got.time_unix_nano == 123


def test_concurrent_records_are_all_counted() -> None:
    tally = HistogramTally("d", "s", "test", (), SECONDS_BUCKETS)

    def work() -> None:
        for i in range(20_000):
            tally.record(i % 7 / 100)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metric = tally.metric(0)
    assert metric is not None
    (point,) = metric.data.data_points  # type: ignore[union-attr]
    assert point.count == sum(point.bucket_counts) == 80_000
