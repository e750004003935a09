"""Router metrics (names, units and attributes: docs/observability.md)."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.metrics import CallbackOptions, Observation

from gamaserving.telemetry import RATIO_BUCKETS, SECONDS_BUCKETS, TOKEN_BUCKETS, Telemetry
from router.failover.circuit import State

StateSource = Callable[[], list[tuple[str, str, State, bool]]]
Gauge = Callable[[], int]


class RouterMetrics:
    """The request path's instruments. A router always records them; the Prometheus port
    (telemetry.prometheus_port) only decides whether they are served."""

    def __init__(self, telemetry: Telemetry) -> None:
        meter = telemetry.meter
        # Counters and histograms on the request path are tallies
        # (gamaserving/telemetry/tally.py).
        self._requests = telemetry.tally(
            "gamaserving.router.requests",
            "{request}",
            "Requests by model, arm, task and outcome",
            ("model", "arm", "task", "outcome"),
        )
        self._fallbacks = telemetry.tally(
            "gamaserving.router.fallbacks",
            "{request}",
            "Requests served by another model, by reason",
            ("reason", "from_model", "to_model"),
        )
        self._quality = telemetry.tally(
            "gamaserving.router.quality.failures",
            "{check}",
            "Failed quality checks by model and check",
            ("model", "check"),
        )
        self._exposures = telemetry.tally(
            "gamaserving.router.experiment.exposures",
            "{request}",
            "Requests assigned to an arm",
            ("experiment", "arm"),
        )
        self._results_dropped = telemetry.tally(
            "gamaserving.router.results.dropped",
            "{event}",
            "Exposures and outcomes dropped because the results store was down too long",
            ("kind",),
        )
        self._results_set_aside = telemetry.tally(
            "gamaserving.router.results.set_aside",
            "{event}",
            "Exposures and outcomes the results store refused on their own, kept as dead letters",
            ("kind",),
        )
        self._segment_cuts = telemetry.tally(
            "gamaserving.router.experiment.segment_values_cut",
            "{value}",
            "Segment values longer than 64 characters, cut to 64 before they were stored",
            ("experiment", "dimension"),
        )
        self._reused_ids = telemetry.tally(
            "gamaserving.router.request_ids.reused",
            "{request}",
            "Requests that reused an earlier request's id (only the first exposure counts)",
            (),
        )
        self._shed = telemetry.tally(
            "gamaserving.router.shed",
            "{request}",
            "Requests refused over the in-flight limit",
            (),
        )
        self._shadows = telemetry.tally(
            "gamaserving.router.shadow.requests",
            "{request}",
            "Shadow copies by primary model, shadow model and outcome (ok, failed, dropped)",
            ("primary_model", "shadow_model", "outcome"),
        )
        self._agreement = telemetry.histogram(
            "gamaserving.router.shadow.agreement",
            "1",
            "Agreement of a shadow answer with the served one",
            ("primary_model", "shadow_model", "measure"),
            RATIO_BUCKETS,
        )
        self._duration = telemetry.histogram(
            "gamaserving.router.request.duration",
            "s",
            "Routing time by model, arm, task and outcome",
            ("model", "arm", "task", "outcome"),
            SECONDS_BUCKETS,
        )
        self._tokens = telemetry.histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Tokens per generated answer, by gen_ai.token.type (input or output)",
            ("gen_ai.operation.name", "gen_ai.request.model", "gen_ai.token.type"),
            TOKEN_BUCKETS,
        )
        self._reloads = meter.create_counter(
            "gamaserving.router.config.reloads",
            unit="{reload}",
            description="Configuration reloads by outcome",
        )
        self._anomalies = meter.create_counter(
            "gamaserving.router.anomalies",
            unit="{anomaly}",
            description="Anomalies detected by model and signal",
        )
        self._client = telemetry.histogram(
            "rpc.client.call.duration",
            "s",
            "Duration of the router's calls to model servers",
            (
                "rpc.system.name",
                "rpc.method",
                "rpc.response.status_code",
                "server.address",
                "model",
            ),
            SECONDS_BUCKETS,
        )

    def request(
        self, model: str, arm: str, task: str, outcome: str, seconds: float | None = None
    ) -> None:
        self._requests.add(model, arm, task, outcome)
        if seconds is not None:
            self._duration.record(seconds, model, arm, task, outcome)

    def tokens(self, model: str, input_tokens: int, output_tokens: int) -> None:
        self._tokens.record(input_tokens, "text_completion", model, "input")
        self._tokens.record(output_tokens, "text_completion", model, "output")

    def reload(self, ok: bool) -> None:
        self._reloads.add(1, {"outcome": "ok" if ok else "failed"})

    def anomaly(self, model: str, signal: str) -> None:
        self._anomalies.add(1, {"model": model, "signal": signal})

    def fallback(self, reason: str, from_model: str, to_model: str) -> None:
        self._fallbacks.add(reason, from_model, to_model)

    def quality_failure(self, model: str, check: str) -> None:
        self._quality.add(model, check)

    def results_dropped(self, kind: str, n: int) -> None:
        for _ in range(n):
            self._results_dropped.add(kind)

    def results_set_aside(self, kind: str, n: int) -> None:
        for _ in range(n):
            self._results_set_aside.add(kind)

    def request_ids_reused(self, n: int) -> None:
        for _ in range(n):
            self._reused_ids.add()

    def exposure(self, experiment: str, arm: str) -> None:
        self._exposures.add(experiment, arm)

    def segment_value_cut(self, experiment: str, dimension: str) -> None:
        self._segment_cuts.add(experiment, dimension)

    def shed(self) -> None:
        self._shed.add()

    def shadow(self, primary: str, shadow: str, outcome: str) -> None:
        self._shadows.add(primary, shadow, outcome)

    def agreement(self, primary: str, shadow: str, measure: str, value: float) -> None:
        self._agreement.record(value, primary, shadow, measure)

    def client_call(
        self, model: str, endpoint: str, seconds: float, status: str, method: str
    ) -> None:
        self._client.record(seconds, "grpc", method, status, endpoint, model)


class Unmeasured(RouterMetrics):
    """The measures when they go nowhere (no Prometheus port, no OTLP export): each is a
    no-op, so serving pays nothing for them (recording them, and the per-call interceptor,
    cost the router about 4% of its throughput at c=16 in benchmarks/router.py)."""

    def __init__(self) -> None:
        pass

    def request(
        self, model: str, arm: str, task: str, outcome: str, seconds: float | None = None
    ) -> None:
        pass

    def tokens(self, model: str, input_tokens: int, output_tokens: int) -> None:
        pass

    def reload(self, ok: bool) -> None:
        pass

    def anomaly(self, model: str, signal: str) -> None:
        pass

    def fallback(self, reason: str, from_model: str, to_model: str) -> None:
        pass

    def quality_failure(self, model: str, check: str) -> None:
        pass

    def results_dropped(self, kind: str, n: int) -> None:
        pass

    def results_set_aside(self, kind: str, n: int) -> None:
        pass

    def request_ids_reused(self, n: int) -> None:
        pass

    def exposure(self, experiment: str, arm: str) -> None:
        pass

    def segment_value_cut(self, experiment: str, dimension: str) -> None:
        pass

    def shed(self) -> None:
        pass

    def shadow(self, primary: str, shadow: str, outcome: str) -> None:
        pass

    def agreement(self, primary: str, shadow: str, measure: str, value: float) -> None:
        pass

    def client_call(
        self, model: str, endpoint: str, seconds: float, status: str, method: str
    ) -> None:
        pass


def observe_router(
    telemetry: Telemetry, circuits: StateSource, in_flight: Gauge, results_pending: Gauge
) -> None:
    """Gauges read from the router's state whenever Prometheus scrapes."""
    meter = telemetry.meter

    def circuit(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(int(state is s), {"model": model, "endpoint": endpoint, "state": s.value})
            for model, endpoint, state, _ in circuits()
            for s in State
        ]

    def serving(_: CallbackOptions) -> list[Observation]:
        return [Observation(int(up), {"model": m, "endpoint": e}) for m, e, _, up in circuits()]

    def flying(_: CallbackOptions) -> list[Observation]:
        return [Observation(in_flight())]

    meter.create_observable_gauge(
        "gamaserving.router.circuit.state",
        [circuit],
        unit="1",
        description="1 for each endpoint's current state",
    )
    meter.create_observable_gauge(
        "gamaserving.router.endpoint.serving",
        [serving],
        unit="1",
        description="1 while the endpoint's health is SERVING",
    )

    meter.create_observable_up_down_counter(
        "gamaserving.router.results.pending",
        [lambda _: [Observation(results_pending())]],
        unit="{event}",
        description="Exposures and outcomes waiting to be written to the results store",
    )
    meter.create_observable_up_down_counter(
        "gamaserving.router.in_flight",
        [flying],
        unit="{request}",
        description="Requests being served",
    )
