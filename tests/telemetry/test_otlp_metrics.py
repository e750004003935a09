"""Metrics reach a real OTLP/gRPC receiver and the Prometheus endpoint from one aggregation:
the same totals on both, including the hot-path tallies and histograms."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

from gamaserving.telemetry import Telemetry
from gamaserving.telemetry.tally import Tally


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self) -> None:
        self.sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, list[int]]] = {}
        self.exports = 0
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.exports += 1
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        for point in metric.histogram.data_points:
                            labels = tuple(
                                sorted((a.key, a.value.string_value) for a in point.attributes)
                            )
                            self.histograms[(metric.name, labels)] = (
                                point.count,
                                list(point.bucket_counts),
                            )
                        if metric.WhichOneof("data") != "sum":
                            continue
                        for point in metric.sum.data_points:
                            labels = tuple(
                                sorted((a.key, a.value.string_value) for a in point.attributes)
                            )
                            value = point.as_int if point.HasField("as_int") else point.as_double
                            self.sums[(metric.name, labels)] = value  # cumulative: the latest
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[MetricsReceiver, int]]:
    collector = MetricsReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(0)


def test_one_aggregation_feeds_prometheus_and_otlp(
    receiver: tuple[MetricsReceiver, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    collector, port = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")
    telemetry = Telemetry("otlp-test")
    try:
        tally = Tally(telemetry.meter, "demo.requests", "{request}", "test", ("outcome",))
        histogram = telemetry.histogram("demo.duration", "s", "test", ("outcome",), (0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 2.0):
            histogram.record(value, "ok")
        counter = telemetry.meter.create_counter("demo.sync", unit="{request}")
        for _ in range(7):
            tally.add("ok")
        tally.add("error")
        counter.add(3, {"outcome": "ok"})
        key = ("demo.requests", (("outcome", "ok"),))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and collector.sums.get(key) != 7:
            time.sleep(0.05)
        assert collector.sums[key] == 7
        assert collector.sums[("demo.requests", (("outcome", "error"),))] == 1
        assert collector.sums[("demo.sync", (("outcome", "ok"),))] == 3
        assert collector.histograms[("demo.duration", (("outcome", "ok"),))] == (4, [2, 1, 1])
        metrics_port = telemetry.serve("127.0.0.1", 0)
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        (line,) = [
            x
            for x in page.splitlines()
            if x.startswith("demo_requests_total{") and 'outcome="ok"' in x
        ]
        assert float(line.rsplit(" ", 1)[1]) == 7
        buckets = {
            x.split('le="')[1].split('"')[0]: float(x.rsplit(" ", 1)[1])
            for x in page.splitlines()
            if x.startswith("demo_duration_seconds_bucket{")
        }
        assert buckets == {"0.1": 2, "1.0": 3, "+Inf": 4}  # Prometheus buckets are cumulative
    finally:
        telemetry.shutdown()
    assert collector.exports >= 2  # periodic pushes, and a last one at shutdown
