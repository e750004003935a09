"""Model-server metrics (names, units and attributes: docs/observability.md). Those on the
request path are tallies (gamaserving/telemetry/tally.py)."""

from __future__ import annotations

from opentelemetry.metrics import CallbackOptions, Observation

from gamaserving.telemetry import BATCH_BUCKETS, SECONDS_BUCKETS, Telemetry
from modelserver.core import InferenceCore


class ModelServerMetrics:
    def __init__(self, telemetry: Telemetry, core: InferenceCore) -> None:
        self.model = core.config.name
        self._requests = telemetry.tally(
            "gamaserving.modelserver.requests",
            "{request}",
            "Inference requests by task and outcome",
            ("model", "task", "outcome"),
        )
        self._batch = telemetry.histogram(
            "gamaserving.modelserver.batch.size",
            "{request}",
            "Requests per model call",
            ("model",),
            BATCH_BUCKETS,
        )
        self._queue = telemetry.histogram(
            "gamaserving.modelserver.queue.duration",
            "s",
            "Time a request waited in the batcher",
            ("model",),
            SECONDS_BUCKETS,
        )
        self._compute = telemetry.histogram(
            "gamaserving.modelserver.compute.duration",
            "s",
            "Duration of one model call",
            ("model",),
            SECONDS_BUCKETS,
        )

        def depth(_: CallbackOptions) -> list[Observation]:
            queued = core.batcher.depth if core.batcher else 0
            return [Observation(queued, {"model": self.model})]

        telemetry.meter.create_observable_up_down_counter(
            "gamaserving.modelserver.queue.depth",
            [depth],
            unit="{request}",
            description="Requests waiting",
        )

    def request(self, task: str, outcome: str, queue_s: float | None) -> None:
        self._requests.add(self.model, task, outcome)
        if queue_s is not None:
            self._queue.record(queue_s, self.model)

    def batch(self, size: int, seconds: float) -> None:
        self._batch.record(size, self.model)
        self._compute.record(seconds, self.model)
