"""Model-server metrics (names, units and attributes: docs/observability.md)."""

from __future__ import annotations

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from modelserver.core import InferenceCore


class ModelServerMetrics:
    def __init__(self, meter: Meter, core: InferenceCore) -> None:
        self.model = core.config.name
        self._requests = meter.create_counter(
            "gamaserving.modelserver.requests",
            unit="{request}",
            description="Inference requests by task and outcome",
        )
        self._batch = meter.create_histogram(
            "gamaserving.modelserver.batch.size",
            unit="{request}",
            description="Requests per model call",
        )
        self._queue = meter.create_histogram(
            "gamaserving.modelserver.queue.duration",
            unit="s",
            description="Time a request waited in the batcher",
        )
        self._compute = meter.create_histogram(
            "gamaserving.modelserver.compute.duration",
            unit="s",
            description="Duration of one model call",
        )

        def depth(_: CallbackOptions) -> list[Observation]:
            queued = core.batcher.depth if core.batcher else 0
            return [Observation(queued, {"model": self.model})]

        meter.create_observable_up_down_counter(
            "gamaserving.modelserver.queue.depth",
            [depth],
            unit="{request}",
            description="Requests waiting",
        )

    def request(self, task: str, outcome: str, queue_s: float | None) -> None:
        self._requests.add(1, {"model": self.model, "task": task, "outcome": outcome})
        if queue_s is not None:
            self._queue.record(queue_s, {"model": self.model})

    def batch(self, size: int, seconds: float) -> None:
        self._batch.record(size, {"model": self.model})
        self._compute.record(seconds, {"model": self.model})
