"""Model-server metrics (names, units and attributes: docs/observability.md). Those on the
request path are tallies (gamaserving/telemetry/tally.py)."""

from __future__ import annotations

from opentelemetry.metrics import CallbackOptions, Observation

from gamaserving.telemetry import (
    BATCH_BUCKETS,
    SECONDS_BUCKETS,
    TOKEN_BUCKETS,
    TOKEN_TIME_BUCKETS,
    Telemetry,
)
from modelserver.core import InferenceCore
from modelserver.generation.scheduler import Finished

GENAI_KEYS = ("gen_ai.operation.name", "gen_ai.request.model")
OPERATION = "text_completion"


class ModelServerMetrics:
    """The request path's instruments (the core's CoreMetrics)."""

    def __init__(self, telemetry: Telemetry, model: str) -> None:
        self.model = model
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

        self._ttft = telemetry.histogram(
            "gen_ai.server.time_to_first_token",
            "s",
            "Time from a generation's arrival to its first token",
            GENAI_KEYS,
            TOKEN_TIME_BUCKETS,
        )
        self._tpot = telemetry.histogram(
            "gen_ai.server.time_per_output_token",
            "s",
            "Mean time per output token after the first, per generation",
            GENAI_KEYS,
            TOKEN_TIME_BUCKETS,
        )
        self._tokens = telemetry.histogram(
            "gamaserving.modelserver.generation.tokens",
            "{token}",
            "Tokens per generation, by gen_ai.token.type (input or output)",
            (*GENAI_KEYS, "gen_ai.token.type"),
            TOKEN_BUCKETS,
        )
        self._finished = telemetry.tally(
            "gamaserving.modelserver.generation.finished",
            "{generation}",
            "Generations that ended, by finish reason (stop or length)",
            ("model", "reason"),
        )

    def request(self, task: str, outcome: str, queue_s: float | None) -> None:
        self._requests.add(self.model, task, outcome)
        if queue_s is not None:
            self._queue.record(queue_s, self.model)

    def batch(self, size: int, seconds: float) -> None:
        self._batch.record(size, self.model)
        self._compute.record(seconds, self.model)

    def generated(self, finished: Finished) -> None:
        self._ttft.record(finished.first_token_ms / 1000, OPERATION, self.model)
        if finished.output_tokens > 1:
            per_token = finished.decode_ms / 1000 / (finished.output_tokens - 1)
            self._tpot.record(per_token, OPERATION, self.model)
        self._tokens.record(finished.input_tokens, OPERATION, self.model, "input")
        self._tokens.record(finished.output_tokens, OPERATION, self.model, "output")
        self._finished.add(self.model, finished.reason)


def observe_workers(telemetry: Telemetry, core: InferenceCore) -> None:
    """Gauges read from the core's work loops whenever Prometheus scrapes."""
    model = core.config.name

    def depth(_: CallbackOptions) -> list[Observation]:
        queued = core.batcher.depth if core.batcher else 0
        if core.scheduler is not None:
            queued += core.scheduler.depth
        return [Observation(queued, {"model": model})]

    def running(_: CallbackOptions) -> list[Observation]:
        s = core.scheduler
        return [] if s is None else [Observation(s.occupancy, {"model": model})]

    def reserved(_: CallbackOptions) -> list[Observation]:
        s = core.scheduler
        return [] if s is None else [Observation(s.kv_reserved, {"model": model})]

    def budget(_: CallbackOptions) -> list[Observation]:
        s = core.scheduler
        if s is None:
            return []
        return [Observation(s.kv_budget, {"model": model})]

    def decoded(_: CallbackOptions) -> list[Observation]:
        s = core.scheduler
        if s is None:
            return []
        return [Observation(s.stats.decoded_tokens, {"model": model})]

    meter = telemetry.meter
    meter.create_observable_gauge(
        "gamaserving.modelserver.generation.batch.occupancy",
        [running],
        unit="{sequence}",
        description="Sequences in the running decode batch",
    )
    meter.create_observable_gauge(
        "gamaserving.modelserver.generation.kv.reserved",
        [reserved],
        unit="{slot}",
        description="KV-cache slots the running batch may reach",
    )
    meter.create_observable_gauge(
        "gamaserving.modelserver.generation.kv.budget",
        [budget],
        unit="{slot}",
        description="The KV-cache budget (continuous_batching.kv_budget_tokens)",
    )
    meter.create_observable_counter(
        "gamaserving.modelserver.generation.decoded_tokens",
        [decoded],
        unit="{token}",
        description="Tokens the model computed, warm-up and cancelled sequences included",
    )

    telemetry.meter.create_observable_up_down_counter(
        "gamaserving.modelserver.queue.depth",
        [depth],
        unit="{request}",
        description="Requests waiting",
    )
