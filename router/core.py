"""The router core, transport-free: a hot-swappable state (configuration and backends),
assignment, dispatch with failover, quality bookkeeping and shadow copies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from gamaserving.oip import ModelOutput, parse_response
from gamaserving.telemetry.tracing import ChildSpan
from router.backends.model import ModelBackend
from router.backends.oip import infer_request
from router.config import ExperimentSettings, RouterConfig, RouteSettings
from router.errors import RouteError
from router.experiments.assignment import Assignment, assign
from router.experiments.results import Report, ResultsCollector, report
from router.experiments.shadow import ShadowRunner, sampled
from router.failover.circuit import State
from router.failover.dispatch import Attempt, Dispatcher
from router.metrics import RouterMetrics
from router.quality.tracker import AnomalyMonitor, QualityTracker
from router.quality.trends import TrendTracker
from router.quality.validators import Check
from router.requests import RouteRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterState:
    config: RouterConfig
    backends: dict[str, ModelBackend]


@dataclass
class RouteResult:
    output: ModelOutput
    model: str
    assignment: Assignment | None
    fallback_reason: str
    shadowed: bool
    attempts: list[Attempt]
    checks: list[Check]
    model_ms: float
    total_ms: float

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


@dataclass
class RouterStats:
    requests: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """(model, arm, task, outcome) -> count."""
    fallbacks: Counter[str] = field(default_factory=Counter)
    fallbacks_from: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(chosen model, reason) -> requests another model served."""
    validated: Counter[str] = field(default_factory=Counter)
    """model -> outputs validated."""
    quality_failed: Counter[str] = field(default_factory=Counter)
    """model -> outputs that failed at least one check."""
    latencies: deque[tuple[float, str, float]] = field(default_factory=lambda: deque(maxlen=20_000))
    """(time, model, ms) of recent requests, for latency percentiles over a window."""
    circuit_changes: Counter[tuple[str, str, str]] = field(default_factory=Counter)


def chain(route: RouteSettings, first: str) -> list[str]:
    """The chosen model, then the route's primary, then its fallbacks, each once."""
    return list(dict.fromkeys([first, route.primary, *route.fallbacks]))


class RouterCore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.state: RouterState | None = None
        self.clock = clock
        self.quality = QualityTracker()
        self.anomalies: AnomalyMonitor | None = None
        self.trends: TrendTracker | None = None
        self.results = ResultsCollector()
        # (experiment, seed) -> coverage set at run time by the automatic rollback.
        self.coverage_overrides: dict[tuple[str, str], float] = {}
        # (experiment, seed) -> requests per arm when the ramp last stepped.
        self.ramp_marks: dict[tuple[str, str], dict[str, int]] = {}
        self.shadow = ShadowRunner()
        self.stats = RouterStats()
        self.dispatcher = Dispatcher(self._record_quality, clock)
        self.metrics: RouterMetrics | None = None

    def attach_metrics(self, metrics: RouterMetrics) -> None:
        self.metrics = metrics
        self.dispatcher.on_call = metrics.client_call
        self.shadow.on_agreement = metrics.agreement

    def result_moments(self) -> dict[str, dict[str, dict[str, tuple[int, float, float]]]]:
        """experiment -> arm -> metric -> (n, sum, sum of squares), for metric export."""
        return {
            e: {
                a: {m: (x.n, x.total, x.squares) for m, x in r.metrics.items()}
                for a, r in arms.items()
            }
            for e, arms in self.results.arms.items()
        }

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
                )
                backend.start()
                backends[key] = backend
        return backends

    async def validate_tasks(
        self, config: RouterConfig, backends: dict[str, ModelBackend], wait: float
    ) -> list[str]:
        """Task errors against the ModelMetadata of every model reachable within `wait` s."""
        await asyncio.gather(*(b.wait_info(wait) for b in backends.values()))
        known = {key: b.info.tasks for key, b in backends.items() if b.info is not None}
        for key, b in backends.items():
            if b.info is None:
                log.warning("model %s: no metadata yet; its tasks are checked when it answers", key)
        return config.task_errors(known)

    def swap(self, config: RouterConfig, backends: dict[str, ModelBackend]) -> list[ModelBackend]:
        """Make (config, backends) current; returns the backends no longer used."""
        old = self.state
        self.state = RouterState(config, backends)
        self.anomalies = self.anomalies or AnomalyMonitor(config.anomaly)
        self.trends = self.trends or TrendTracker(config.trends)
        if old is None:
            return []
        kept = {id(b) for b in backends.values()}
        return [b for b in old.backends.values() if id(b) not in kept]

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

    # -- requests ------------------------------------------------------------------------------

    async def process(self, req: RouteRequest, deadline: float | None) -> RouteResult:
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
                assignment = assign(self.effective(route.experiment), req.user_id)
                if assignment is not None:
                    span.set_attribute("experiment", assignment.experiment)
                    span.set_attribute("arm", assignment.arm)
        first = assignment.model if assignment else route.primary
        backends = [state.backends[key] for key in chain(route, first)]
        arm = assignment.arm if assignment else ""
        try:
            outcome = await self.dispatcher.run(route, req, backends, deadline)
        except RouteError as exc:
            self._count(first, arm, req.task, exc.code.name.lower(), started)
            if assignment is not None and exc.code is not grpc.StatusCode.INVALID_ARGUMENT:
                # The caller's own mistakes do not count against an arm.
                latency = (self.clock() - started) * 1000
                self.results.record(
                    assignment.experiment, assignment.arm, latency, True, False, False
                )
            raise
        first_failure = next((a.reason for a in outcome.attempts if a.outcome != "ok"), "")
        fallback = outcome.model != first or outcome.attempts[0].outcome != "ok"
        reason = first_failure if fallback else ""
        if assignment is not None and self.metrics is not None:
            self.metrics.exposure(assignment.experiment, assignment.arm)
        if outcome.model != first:
            self.stats.fallbacks[reason] += 1
            self.stats.fallbacks_from[(first, reason)] += 1
            if self.metrics is not None:
                self.metrics.fallback(reason, first, outcome.model)
            log.warning(
                "fallback %s -> %s (%s)",
                first,
                outcome.model,
                reason,
                extra={
                    "event": "fallback",
                    "request_id": req.request_id,
                    "task": req.task,
                    "from_model": first,
                    "to_model": outcome.model,
                    "reason": reason,
                },
            )
        outcome_label = "ok" if not outcome.failed_checks else "quality_failed"
        self._count(outcome.model, arm, req.task, outcome_label, started)
        latency_ms = (self.clock() - started) * 1000
        self.stats.latencies.append((self.clock(), outcome.model, latency_ms))
        if self.trends is not None:
            self.trends.record(first, outcome.model, latency_ms, not outcome.failed_checks)
        if assignment is not None:
            self.results.record(
                assignment.experiment,
                assignment.arm,
                latency_ms,
                False,
                outcome.model != first,
                bool(outcome.failed_checks),
            )
        shadowed = self._maybe_shadow(state, route, req, outcome.model, outcome.output)
        return RouteResult(
            output=outcome.output,
            model=outcome.model,
            assignment=assignment,
            fallback_reason=reason,
            shadowed=shadowed,
            attempts=outcome.attempts,
            checks=outcome.checks,
            model_ms=outcome.model_ms,
            total_ms=(self.clock() - started) * 1000,
        )

    def effective(self, experiment: ExperimentSettings) -> ExperimentSettings:
        """The experiment as configured, or with the coverage the automatic rollback set."""
        override = self.coverage_overrides.get((experiment.name, experiment.seed))
        return (
            experiment if override is None else experiment.model_copy(update={"coverage": override})
        )

    def experiment(self, name: str) -> ExperimentSettings | None:
        state = self.state
        if state is None:
            return None
        return next(
            (
                r.experiment
                for r in state.config.routes.values()
                if r.experiment and r.experiment.name == name
            ),
            None,
        )

    def experiment_report(self, name: str) -> Report | None:
        settings = self.experiment(name)
        return None if settings is None else report(settings, self.results.arms.get(name, {}))

    def rolled_back(self, experiment: ExperimentSettings) -> bool:
        return self.coverage_overrides.get((experiment.name, experiment.seed)) == 0.0

    def advance_ramps(self) -> list[tuple[str, float]]:
        """Take the next ramp step of every healthy experiment; returns (name, new coverage)."""
        state = self.state
        moved: list[tuple[str, float]] = []
        for route in state.config.routes.values() if state else []:
            e = route.experiment
            if e is None or not e.ramp or self.rolled_back(e):
                continue
            key = (e.name, e.seed)
            current = self.effective(e).coverage
            nxt = next((step for step in e.ramp if step > current), None)
            if nxt is None:
                continue
            result = report(e, self.results.arms.get(e.name, {}))
            since = self.ramp_marks.get(key, {})
            fresh = all(result.counts[a] - since.get(a, 0) >= e.min_samples for a in result.counts)
            healthy = result.verdict != "ROLL_BACK" and result.srm_p_value >= 0.001
            if healthy and fresh:
                self.coverage_overrides[key] = nxt
                self.ramp_marks[key] = dict(result.counts)
                log.info(
                    "experiment %s ramped to coverage %g",
                    e.name,
                    nxt,
                    extra={"event": "ramp", "experiment": e.name, "coverage": nxt},
                )
                moved.append((e.name, nxt))
        return moved

    def auto_rollback(self) -> list[str]:
        """Roll back every experiment whose guardrails fail and that asks for it; returns names."""
        state = self.state
        done: list[str] = []
        if state is None:
            return done
        for route in state.config.routes.values():
            e = route.experiment
            if e is None or not e.auto_rollback or self.rolled_back(e):
                continue
            result = report(e, self.results.arms.get(e.name, {}))
            if result.verdict == "ROLL_BACK":
                self.coverage_overrides[(e.name, e.seed)] = 0.0
                log.error(
                    "experiment %s rolled back: %s",
                    e.name,
                    "; ".join(result.reasons),
                    extra={"event": "rollback", "experiment": e.name, "reasons": result.reasons},
                )
                done.append(e.name)
        return done

    def _maybe_shadow(
        self,
        state: RouterState,
        route: RouteSettings,
        req: RouteRequest,
        served_by: str,
        served: ModelOutput,
    ) -> bool:
        shadow = route.experiment.shadow if route.experiment else None
        if (
            shadow is None
            or shadow.model == served_by
            or not sampled(req.request_id, shadow.percent)
        ):
            return False
        backend = state.backends[shadow.model]

        async def call() -> ModelOutput:
            for endpoint in backend.ordered():
                if endpoint.serving:
                    response = await endpoint.stub.ModelInfer(
                        infer_request(backend.server_name, req), timeout=shadow.timeout_ms / 1000
                    )
                    return parse_response(response)
            raise RouteError(
                grpc.StatusCode.UNAVAILABLE, f"shadow {shadow.model} has no serving endpoint"
            )

        return self.shadow.submit(served_by, served, shadow.model, shadow.max_concurrency, call)

    def _count(
        self, model: str, arm: str, task: str, outcome: str, started: float | None = None
    ) -> None:
        self.stats.requests[(model, arm, task, outcome)] += 1
        if self.metrics is not None:
            seconds = None if started is None else self.clock() - started
            self.metrics.request(model, arm, task, outcome, seconds)

    def _record_quality(
        self, model: str, output: ModelOutput, checks: list[Check], latency_ms: float
    ) -> None:
        self.quality.record(model, checks)
        self.stats.validated[model] += 1
        if any(not c.passed for c in checks):
            self.stats.quality_failed[model] += 1
        if self.metrics is not None:
            for check in checks:
                if not check.passed:
                    self.metrics.quality_failure(model, check.name)
        if self.anomalies is None:
            return
        signals = {"latency_ms": latency_ms}
        if output.features is not None and output.features.size:
            signals["embedding_norm"] = float(np.linalg.norm(output.features))
        if output.scores:
            signals["top_score"] = float(output.scores[0])
        for signal, value in signals.items():
            if (
                self.anomalies.observe(model, signal, value) is not None
                and self.metrics is not None
            ):
                self.metrics.anomaly(model, signal)

    def _circuit_changed(self, model: str, target: str, old: State, new: State) -> None:
        self.stats.circuit_changes[(model, target, new.value)] += 1
        log.warning(
            "circuit %s %s: %s -> %s",
            model,
            target,
            old.value,
            new.value,
            extra={"event": "circuit", "model": model, "endpoint": target, "state": new.value},
        )

    async def close(self) -> None:
        await self.shadow.drain()
        if self.state is not None:
            for backend in self.state.backends.values():
                await backend.close()
