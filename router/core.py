"""The router core, transport-free: a hot-swappable state (configuration and backends) and
request orchestration: assignment, dispatch with failover, the shadow copy. Experiment policy
lives in router/experiments/policy.py, and every outcome is recorded by router/recorder.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from gamaserving.oip import ModelOutput
from gamaserving.telemetry.tracing import ChildSpan
from router.backends.model import ModelBackend
from router.backends.streaming import OnPiece
from router.config import (
    ConfigError,
    ExperimentSettings,
    OutcomeSettings,
    RouterConfig,
    RouteSettings,
)
from router.errors import RouteError
from router.experiments.assignment import Assignment, assign
from router.experiments.policy import ExperimentPolicy
from router.experiments.segments import Correction, RequestFacts
from router.experiments.shadow import ShadowRunner, sampled
from router.failover.circuit import State
from router.failover.dispatch import Dispatcher
from router.limits import limit_problem
from router.metrics import RouterMetrics
from router.quality.tracker import AnomalyMonitor, QualityTracker
from router.quality.trends import Series, TrendTracker, trend
from router.record import RouteResult
from router.recorder import Recorder, RouterStats
from router.requests import RouteRequest
from router.results.document import phase_page, phase_report
from router.results.service import ExperimentResults
from router.results.store import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterState:
    config: RouterConfig
    backends: dict[str, ModelBackend]


def chain(route: RouteSettings, first: str) -> list[str]:
    """The first model, then the route's primary, then its fallbacks, each once."""
    return list(dict.fromkeys([first, route.primary, *route.fallbacks]))


class RouterCore:
    """Constructed whole: the metrics, the results store (None without experiments) and the
    tracer are given here and never change."""

    def __init__(
        self,
        metrics: RouterMetrics,
        results: ExperimentResults | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_readiness: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_readiness` hears every event that can change `ready()`."""
        self.state: RouterState | None = None
        self._on_readiness = on_readiness
        self.clock = clock
        self.policy = ExperimentPolicy()
        self.results = results
        self.recorder = Recorder(metrics, results.expose if results else lambda _: None, clock)
        self.shadow = ShadowRunner(self.recorder.shadow, metrics.agreement)
        self.dispatcher = Dispatcher(self.recorder.checked, clock, metrics.client_call, tracer)

    # The recorder's bookkeeping, read by the admin API, alert signals and metrics.
    @property
    def stats(self) -> RouterStats:
        return self.recorder.stats

    @property
    def quality(self) -> QualityTracker:
        return self.recorder.quality

    @property
    def anomalies(self) -> AnomalyMonitor:
        return self.recorder.anomalies

    @property
    def trends(self) -> TrendTracker:
        return self.recorder.trends

    @property
    def metrics(self) -> RouterMetrics:
        return self.recorder.metrics

    def circuits(self) -> list[tuple[str, str, State, bool]]:
        """(model, endpoint, circuit state, serving) for every endpoint of the current state."""
        if self.state is None:
            return []
        return [
            (m, e.target, e.breaker.state, bool(e.serving))
            for m, b in self.state.backends.items()
            for e in b.endpoints
        ]

    # -- configuration -------------------------------------------------------------------------

    def build(self, config: RouterConfig) -> dict[str, ModelBackend]:
        """Backends for `config`, reusing current ones whose settings did not change."""
        current = self.state.backends if self.state else {}
        backends = {}
        for key, settings in config.models.items():
            old = current.get(key)
            if old is not None and old.settings == settings:
                backends[key] = old
            else:
                backend = ModelBackend(
                    key,
                    settings,
                    config.server.max_message_bytes,
                    self.clock,
                    self._circuit_changed,
                    self._on_readiness,
                )
                backend.start()
                backends[key] = backend
        return backends

    async def validate_tasks(
        self, config: RouterConfig, backends: dict[str, ModelBackend], wait: float
    ) -> list[str]:
        """Task errors against the ModelMetadata of every model reachable within `wait` s."""
        await asyncio.gather(*(b.wait_info(wait) for b in backends.values()))
        for key, b in backends.items():
            if b.info is None:
                log.warning("model %s: no metadata yet; its tasks are checked when it answers", key)
        return config.task_errors(_declared_tasks(backends))

    def declared_tasks(self) -> dict[str, frozenset[str]]:
        """What each model now served declared in its ModelMetadata (models not heard yet
        are left out)."""
        return _declared_tasks(self.state.backends if self.state else {})

    def swap(self, config: RouterConfig, backends: dict[str, ModelBackend]) -> list[ModelBackend]:
        """Make (config, backends) current; returns the backends no longer used."""
        old = self.state
        self.state = RouterState(config, backends)
        self.recorder.configure(config.anomaly, config.trends)
        if old is None:
            return []
        kept = {id(b) for b in backends.values()}
        return [b for b in old.backends.values() if id(b) not in kept]

    def _circuit_changed(self, model: str, target: str, old: State, new: State) -> None:
        self.recorder.circuit_changed(model, target, old, new)
        self._on_readiness()

    def next_readiness_change(self) -> float | None:
        """Seconds until `ready()` may change with no event: the soonest end of an open
        circuit's wait. None when only events can change it."""
        waits = [
            wait
            for b in (self.state.backends.values() if self.state else [])
            for e in b.endpoints
            if (wait := e.breaker.back_in_service_in()) is not None
        ]
        return min(waits, default=None)

    def ready(self) -> bool:
        """At least one route has a model that declared its task and has a serving endpoint."""
        state = self.state
        if state is None:
            return False
        for task, route in state.config.routes.items():
            models = [route.primary, *route.fallbacks]
            if route.experiment:
                models += [a.model for a in route.experiment.arms]
            for key in models:
                backend = state.backends[key]
                if backend.serving and backend.can(task):
                    return True
        return False

    # -- experiments ---------------------------------------------------------------------------

    def experiments(self) -> list[tuple[str, ExperimentSettings]]:
        """(task, experiment) of every route that runs one."""
        state = self.state
        if state is None:
            return []
        return [(t, r.experiment) for t, r in sorted(state.config.routes.items()) if r.experiment]

    def experiment(self, name: str) -> ExperimentSettings | None:
        return next((e for _, e in self.experiments() if e.name == name), None)

    def _results(self) -> ExperimentResults:
        if self.results is None:
            raise RouteError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this router has no results store (router.yaml `results`)",
            )
        return self.results

    def outcome_sink(self) -> tuple[ExperimentResults, dict[str, OutcomeSettings]]:
        """Where a caller's outcome report goes, and the outcomes declared now."""
        declared = self.state.config.outcomes if self.state else {}
        return self._results(), declared

    async def experiment_document(
        self, e: ExperimentSettings, seed: str, segment: str, correction: Correction, page: bool
    ) -> tuple[dict[str, Any], str]:
        """The phase's report from the store (every replica's), as `router report --json`
        gives it (with `segment`, broken down by it), and with `page` the results page."""
        results, config = self._results(), self.state.config if self.state else None
        if config is None:
            raise RouteError(grpc.StatusCode.UNAVAILABLE, "the router has no configuration yet")
        try:
            doc = await asyncio.to_thread(
                phase_report, config, results.store, e.name, seed, segment or None, correction
            )
            html = ""
            if page:
                html = await asyncio.to_thread(
                    phase_page, config, results.store, e.name, seed, correction
                )
        except StoreError as exc:
            raise RouteError(grpc.StatusCode.UNAVAILABLE, f"results store: {exc}") from exc
        except ConfigError as exc:  # a dimension the experiment does not record
            raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        return doc, html

    async def outcome_trends(self, model: str = "") -> list[Series]:
        """Per model and outcome metric, the mean reported value over the trend window, from
        the store (so every replica's traffic and every late report is in it)."""
        if self.results is None or self.state is None:
            return []
        t = self.state.config.trends
        since = self.results.wall_clock() - t.bucket_seconds * t.buckets
        try:
            found = await self.results.outcome_trends(since, t.bucket_seconds, model)
        except StoreError as exc:
            log.warning("outcome trends unavailable: %s", exc)
            return []
        out = []
        for (name, metric), points in sorted(found.items()):
            direction, slope, change = trend(points, t.flat_below)
            out.append(
                Series(
                    name, f"outcome:{metric}", t.bucket_seconds, points, direction, slope, change
                )
            )
        return out

    async def phases(self, experiment: str) -> list[str]:
        """Seeds with results, the most recent first (empty when the store cannot say)."""
        if self.results is None:
            return []
        try:
            return await self.results.phases(experiment)
        except StoreError:
            return []

    def experiment_for(self, task: str) -> ExperimentSettings | None:
        return next((e for t, e in self.experiments() if t == task), None)

    def assignment(self, task: str, user_id: str) -> Assignment | None:
        """The arm `user_id` gets now on `task`'s route, as `process` would assign it."""
        e = self.experiment_for(task)
        return None if e is None else assign(self.policy.effective(e), user_id)

    # -- requests ------------------------------------------------------------------------------

    async def process(
        self, req: RouteRequest, deadline: float | None, on_piece: OnPiece | None = None
    ) -> RouteResult:
        """Route one request. With `on_piece`, a generated answer streams to it as decoded
        (ProcessStream); without, the answer comes whole (Process). Both take this path."""
        state = self.state
        if state is None:
            raise RouteError(grpc.StatusCode.UNAVAILABLE, "the router has no configuration yet")
        route = state.config.routes.get(req.task)  # type: ignore[call-overload]
        if route is None:
            routed = ", ".join(sorted(state.config.routes))
            raise RouteError(
                grpc.StatusCode.INVALID_ARGUMENT, f"no route for task {req.task}; routed: {routed}"
            )
        started = self.clock()
        if deadline is None:
            deadline = started + route.default_timeout_ms / 1000
        assignment = None
        if route.experiment is not None:
            # Only experiments assign; a route without one gets no assignment span.
            with ChildSpan(self.dispatcher.tracer, "assign", attributes={"task": req.task}) as span:
                assignment = assign(self.policy.effective(route.experiment), req.user_id)
                if assignment is not None:
                    span.set_attribute("experiment", assignment.experiment)
                    span.set_attribute("arm", assignment.arm)
        first = assignment.model if assignment else route.primary
        backends = [state.backends[key] for key in chain(route, first)]
        unit = req.user_id or req.request_id
        base = RouteResult(
            req.request_id,
            req.task,
            first,
            unit,
            assignment,
            route.experiment,
            total_ms=0.0,
            facts=_facts(req, route.experiment if assignment else None),
        )
        try:
            self._check_limits(req, backends[0])
            dispatched = await self.dispatcher.run(route, req, backends, deadline, on_piece)
        except RouteError as exc:
            self.recorder.routed(replace(base, total_ms=(self.clock() - started) * 1000, error=exc))
            raise
        served = dispatched.answer
        result = replace(
            base,
            attempts=dispatched.attempts,
            answer=served,
            shadowed=self._maybe_shadow(state, route, req, served.model, dispatched.output),
            total_ms=(self.clock() - started) * 1000,
        )
        self.recorder.routed(result)
        return result

    @staticmethod
    def _check_limits(req: RouteRequest, backend: ModelBackend) -> None:
        """The first model's declared limits, checked before anything is sent."""
        if backend.info is None:
            return
        problem = limit_problem(req, backend.key, backend.info.limits)
        if problem is not None:
            raise RouteError(grpc.StatusCode.INVALID_ARGUMENT, problem)

    def _maybe_shadow(
        self,
        state: RouterState,
        route: RouteSettings,
        req: RouteRequest,
        served_model: str,
        answer: ModelOutput,
    ) -> bool:
        shadow = route.experiment.shadow if route.experiment else None
        if (
            shadow is None
            or shadow.model == served_model
            or not sampled(req.request_id, shadow.percent)
        ):
            return False
        backend = state.backends[shadow.model]

        async def call() -> ModelOutput:
            return await self.dispatcher.shadow(
                backend, req, self.clock() + shadow.timeout_ms / 1000, served_model
            )

        return self.shadow.submit(served_model, answer, shadow.model, shadow.max_concurrency, call)

    async def close(self) -> None:
        await self.shadow.drain()
        if self.results is not None:
            await self.results.close()  # everything buffered is written: a drain loses nothing
        if self.state is not None:
            for backend in self.state.backends.values():
                await backend.close()


def _facts(req: RouteRequest, experiment: ExperimentSettings | None) -> RequestFacts:
    """What an exposure's dimensions read of the request; the clip's length only where an
    experiment segments on it (its header is parsed, never the audio decoded)."""
    if experiment is None or not experiment.dimensions:
        return RequestFacts()
    wanted = "audio_duration" in experiment.dimensions
    return RequestFacts(req.metadata, req.clip_seconds() if wanted else None)


def _declared_tasks(backends: dict[str, ModelBackend]) -> dict[str, frozenset[str]]:
    return {key: b.info.tasks for key, b in backends.items() if b.info is not None}
