"""OpenTelemetry metrics for both processes.

Each server owns its MeterProvider (tests run several servers in one process, and the global
provider can be set only once) with a Prometheus reader on its own registry, served on a
scrape port, plus an OTLP exporter when the standard OTEL_* variables ask for one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, start_http_server

from gamaserving.telemetry.tally import HistogramTally, Tally

log = logging.getLogger(__name__)

# Second-scale buckets: the SDK's defaults are meant for milliseconds.
SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# OpenTelemetry's GenAI conventions advise these, with finer ones below for small models.
TOKEN_TIME_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
SCOPE = InstrumentationScope("gamaserving")


def otlp_wanted() -> bool:
    """Whether metrics are exported by OTLP (the standard OTEL_* variables say where)."""
    if os.environ.get("OTEL_METRICS_EXPORTER", "").lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


class _Reader(PrometheusMetricReader):  # type: ignore[misc]
    """The one metric reader: it serves the Prometheus endpoint and, given an exporter, pushes
    by OTLP from the same collection (a second MetricReader would make the SDK aggregate every
    measurement twice, on the request path; both outputs want cumulative data). Every
    collection also carries the histogram tallies."""

    def __init__(
        self,
        registry: CollectorRegistry,
        histograms: list[HistogramTally],
        resource: Resource,
        exporter: Any = None,
        interval_s: float = 60.0,
    ) -> None:
        super().__init__(registry=registry)
        self._histograms = histograms
        self._resource = resource
        self._exporter = exporter
        self._interval_s = interval_s
        self._pushing = threading.local()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if exporter is not None:
            self._thread = threading.Thread(
                target=self._push_loop, name="otlp-metrics", daemon=True
            )
            self._thread.start()

    def _with_tallies(self, data: MetricsData | None) -> MetricsData | None:
        now = time.time_ns()
        extra = [m for h in self._histograms if (m := h.metric(now)) is not None]
        if not extra:
            return data
        if data is None or not data.resource_metrics:
            scope = ScopeMetrics(scope=SCOPE, metrics=extra, schema_url="")
            return MetricsData([ResourceMetrics(self._resource, [scope], "")])
        first, *rest = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, sm in enumerate(scopes):
            if sm.scope.name == SCOPE.name:
                scopes[i] = ScopeMetrics(sm.scope, [*sm.metrics, *extra], sm.schema_url)
                break
        else:
            scopes.append(ScopeMetrics(scope=SCOPE, metrics=extra, schema_url=""))
        return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])

    def _receive_metrics(
        self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any
    ) -> None:
        metrics_data = self._with_tallies(metrics_data)
        if getattr(self._pushing, "active", False):
            if metrics_data is not None:
                self._exporter.export(metrics_data, timeout_millis=timeout_millis)
        else:
            super()._receive_metrics(metrics_data, timeout_millis, **kw)

    def _push(self) -> None:
        self._pushing.active = True
        try:
            self.collect()
        except Exception:
            log.exception("OTLP metrics export failed")
        finally:
            self._pushing.active = False

    def _push_loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._push()

    def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout_millis / 1000)
            self._push()
            self._exporter.shutdown()
        super().shutdown(timeout_millis, **kw)


class Telemetry:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self._histograms: list[HistogramTally] = []
        self.tallies: list[Tally] = []
        """Every hot-path counter made here (tests touch each to see every series)."""
        # Resource.create honours OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
        exporter: Any = None
        interval_s = 60.0
        if otlp_wanted():
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter()
            interval_s = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")) / 1000
        reader = _Reader(self.registry, self._histograms, resource, exporter, interval_s)
        self.provider = MeterProvider(metric_readers=[reader], resource=resource)
        self.meter: Meter = self.provider.get_meter(SCOPE.name)
        self._http: Any = None
        self.port = 0
        process_metrics(self.meter)

    def tally(self, name: str, unit: str, description: str, keys: tuple[str, ...]) -> Tally:
        """A counter for the request path (gamaserving/telemetry/tally.py)."""
        tally = Tally(self.meter, name, unit, description, keys)
        self.tallies.append(tally)
        return tally

    def histogram(
        self,
        name: str,
        unit: str,
        description: str,
        keys: tuple[str, ...],
        bounds: Sequence[float],
    ) -> HistogramTally:
        """A histogram for the request path, reported with every collection."""
        histogram = HistogramTally(name, unit, description, keys, bounds)
        self._histograms.append(histogram)
        return histogram

    @property
    def histograms(self) -> list[HistogramTally]:
        return list(self._histograms)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics for Prometheus; returns the bound port (0 picks one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._http.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def shutdown(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        self.provider.shutdown()


def process_metrics(meter: Meter) -> None:
    """Process memory and CPU; GPU utilisation and memory through NVML when a GPU is present."""
    proc = psutil.Process()

    def memory(_: CallbackOptions) -> list[Observation]:
        return [Observation(proc.memory_info().rss, {"process.memory.type": "rss"})]

    def cpu(_: CallbackOptions) -> list[Observation]:
        t = proc.cpu_times()
        return [
            Observation(t.user, {"cpu.mode": "user"}),
            Observation(t.system, {"cpu.mode": "system"}),
        ]

    meter.create_observable_up_down_counter(
        "process.memory.usage", [memory], unit="By", description="Process memory"
    )
    meter.create_observable_counter(
        "process.cpu.time", [cpu], unit="s", description="Process CPU time"
    )
    gpu_metrics(meter)


def gpu_metrics(meter: Meter) -> bool:
    """OpenTelemetry's hardware conventions for each GPU NVML sees: `hw.gpu.utilization`,
    `hw.gpu.memory.usage` and `hw.gpu.memory.limit`, attribute `hw.id` (the NVML index), so
    that the GpuMemoryHigh rule can divide usage by limit."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:
        return False
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def each(read: Callable[[Any], float]) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(_: CallbackOptions) -> list[Observation]:
            return [Observation(read(h), {"hw.id": str(i)}) for i, h in enumerate(handles)]

        return observe

    meter.create_observable_gauge(
        "hw.gpu.utilization",
        [each(lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu / 100)],
        unit="1",
        description="GPU busy share",
    )
    meter.create_observable_up_down_counter(
        "hw.gpu.memory.usage",
        [each(lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).used)],
        unit="By",
        description="GPU memory used",
    )
    meter.create_observable_up_down_counter(
        "hw.gpu.memory.limit",
        [each(lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).total)],
        unit="By",
        description="GPU memory in all",
    )
    return True
