"""The attempt loop: try the first model, then the fallback chain, within the caller's
deadline. Each attempt gets a share of the time left; unhealthy endpoints and open circuits
are skipped; retries to another endpoint of the same model spend the retry budget; an output
that fails a quality check counts as a failure and, where configured, moves on to the next
model. INVALID_ARGUMENT is the caller's fault and goes straight back to the caller."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from gamaserving.oip import ModelOutput, parse_response
from gamaserving.telemetry.tracing import ChildSpan, child_span, record_status
from router.backends.calls import attempt_attributes, call, method
from router.backends.endpoint import Endpoint
from router.backends.model import ModelBackend
from router.backends.streaming import CallFailed, OnPiece, Progress
from router.config import RouteSettings
from router.errors import RouteError
from router.quality.validators import Check, validate
from router.requests import RouteRequest

log = logging.getLogger(__name__)

# Kept back from the caller's deadline to answer it in time: the larger of 20 ms and 5% of the
# caller's budget (10 ms lost the race on two busy cores).
RESERVE_MIN = 0.02
RESERVE_SHARE = 0.05
REASONS = {
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline",
    grpc.StatusCode.INTERNAL: "internal",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
    grpc.StatusCode.UNKNOWN: "unknown",
    grpc.StatusCode.CANCELLED: "cancelled",
}


class Outcome(StrEnum):
    """How one attempt ended (the wire's `RouteAttempt.outcome`)."""

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class Attempt:
    """One try at one endpoint of one model (or a skip, with why): the single record every
    reader of a dispatch uses, so the response, the recorder and the spans agree."""

    model: str
    endpoint: str
    outcome: Outcome
    reason: str = ""
    duration_ms: float = 0.0
    output: ModelOutput | None = None
    """The answer, when the model answered (ok, or failed a quality check)."""
    checks: tuple[Check, ...] = ()
    error: RouteError | None = None
    """The model server's status, when the call failed."""

    @property
    def failed_quality(self) -> bool:
        return self.reason.startswith("quality:")


@dataclass(frozen=True)
class Dispatched:
    """What a dispatch came to: the attempt whose answer goes back, and every attempt."""

    answer: Attempt
    attempts: tuple[Attempt, ...]

    @property
    def output(self) -> ModelOutput:
        assert self.answer.output is not None
        return self.answer.output


class Dispatcher:
    def __init__(
        self,
        on_checks: Callable[[str, ModelOutput, list[Check], float], None],
        clock: Callable[[], float] = time.monotonic,
        on_call: Callable[[str, str, float, str, str], None] = lambda *call: None,
        tracer: Tracer | None = None,
    ) -> None:
        self._on_checks = on_checks
        self._on_call = on_call
        """(model, endpoint, seconds, status name, method) of every call to a model server."""
        self.tracer: Tracer = tracer or trace.NoOpTracer()
        self._clock = clock

    async def run(
        self,
        route: RouteSettings,
        req: RouteRequest,
        chain: list[ModelBackend],
        deadline: float,
        on_piece: OnPiece | None = None,
    ) -> Dispatched:
        """Walk the chain until an attempt answers; else the best marked answer, or give up.
        With `on_piece`, a generated answer's pieces go to the caller as they come, and once
        one has gone, a failure ends the request instead of failing over."""
        # Kept back from the caller's deadline, so its answer arrives in time.
        budget_end = deadline - max(RESERVE_MIN, RESERVE_SHARE * (deadline - self._clock()))
        attempts: list[Attempt] = []
        for index, backend in enumerate(chain):
            models_left = len(chain) - index
            attempts += await self._try_model(
                route, req, backend, models_left, budget_end, on_piece
            )
            last = attempts[-1]
            if last.outcome is Outcome.OK:
                return Dispatched(last, tuple(attempts))
            if last.outcome is Outcome.SKIPPED and last.reason == "deadline":
                return _give_up(req, attempts)  # no time left for anyone
        return _give_up(req, attempts)

    async def _try_model(
        self,
        route: RouteSettings,
        req: RouteRequest,
        backend: ModelBackend,
        models_left: int,
        budget_end: float,
        on_piece: OnPiece | None,
    ) -> list[Attempt]:
        """One model's endpoints in order, until one answers or the model is out of tries;
        the attempt that ends it is last. (A coroutine, not an async generator: those cost
        the request path measurably.)"""
        if backend.can(req.task) is False:
            return [Attempt(backend.key, "", Outcome.SKIPPED, "unsupported_task")]
        backend.budget.on_request()
        attempts: list[Attempt] = []
        tried = False  # a call went out: a further one is a retry, paid from the budget
        for endpoint in backend.ordered():
            skipped = self._admit(backend, endpoint, tried, budget_end)
            if skipped:
                attempts.append(Attempt(backend.key, endpoint.target, Outcome.SKIPPED, skipped))
                if skipped in ("retry_budget", "deadline"):
                    break
                continue
            tried = True
            share = (budget_end - self._clock()) / models_left
            share_s = min(backend.settings.timeout_ms / 1000, share)
            attempt = await self.try_endpoint(
                route, req, backend, endpoint, share_s, budget_end, on_piece
            )
            attempts.append(attempt)
            # After a failed check another endpoint of the same model would answer alike.
            if attempt.outcome is Outcome.OK or attempt.failed_quality:
                break
        return attempts

    def _admit(
        self, backend: ModelBackend, endpoint: Endpoint, tried: bool, budget_end: float
    ) -> str:
        """Empty when `endpoint` may be called now (its breaker permit is then held), else
        why not; a permit taken here and not used is given back here."""
        if not endpoint.serving:
            return "unhealthy"
        if not endpoint.breaker.try_acquire_permission():
            return "circuit_open"
        if tried and not backend.budget.try_spend():
            endpoint.breaker.release()
            return "retry_budget"
        if budget_end - self._clock() <= 0.001:
            endpoint.breaker.release()
            return "deadline"
        return ""

    async def try_endpoint(
        self,
        route: RouteSettings,
        req: RouteRequest,
        backend: ModelBackend,
        endpoint: Endpoint,
        share_s: float,
        budget_end: float,
        on_piece: OnPiece | None = None,
    ) -> Attempt:
        """One call with a held breaker permit, its first response due within `share_s`.
        The permit, the span and the metric callback
        are settled here on every path: recorded with the attempt's outcome, or the permit
        given back when the caller went away before there was one."""
        started = self._clock()
        span = child_span(self.tracer, "attempt", kind=SpanKind.CLIENT)
        if span.is_recording():
            span.set_attributes(attempt_attributes(backend, endpoint, req, share_s))
        progress = Progress()
        endpoint.in_flight += 1
        try:
            response = await call(
                backend, endpoint, req, share_s, span, progress, on_piece, budget_end - started
            )
        except (grpc.aio.AioRpcError, CallFailed) as exc:
            seconds = self._clock() - started
            self._called(backend, endpoint, req, seconds, exc.code())
            # The caller's fault is no failure of the endpoint's.
            endpoint.breaker.record(exc.code() == grpc.StatusCode.INVALID_ARGUMENT, seconds)
            return _fail_over(_ended(span, _failed_call(backend, endpoint, exc, seconds)), progress)
        except BaseException:
            endpoint.breaker.release()  # cancelled by the caller: no outcome to judge
            span.end()
            raise
        finally:
            endpoint.in_flight -= 1
        seconds = self._clock() - started
        self._called(backend, endpoint, req, seconds, None)
        output = parse_response(response)
        checks = self._validate(route, req, backend, output, seconds)
        failed = [c for c in checks if not c.passed]
        # A generated answer's responsiveness is its first response, not its length.
        endpoint.breaker.record(not failed, progress.first_response_s or seconds)
        moves_on = failed and route.quality.on_failure == "fallback" and not progress.pieces_sent
        attempt = Attempt(
            backend.key,
            endpoint.target,
            Outcome.FAILED if moves_on else Outcome.OK,
            f"quality:{failed[0].name}" if moves_on else "",
            seconds * 1000,
            output,
            tuple(checks),
        )
        return _ended(span, attempt)

    def _called(
        self,
        backend: ModelBackend,
        endpoint: Endpoint,
        req: RouteRequest,
        seconds: float,
        status: grpc.StatusCode | None,
    ) -> None:
        name = status.name if status is not None else "OK"
        self._on_call(backend.key, endpoint.target, seconds, name, method(req))

    def _validate(
        self,
        route: RouteSettings,
        req: RouteRequest,
        backend: ModelBackend,
        output: ModelOutput,
        seconds: float,
    ) -> list[Check]:
        with ChildSpan(self.tracer, "validate", attributes={"model": backend.key}) as checking:
            checks = validate(req.task, output, backend.info, route.quality, seconds * 1000)
            failed_names = [c.name for c in checks if not c.passed]
            checking.set_attribute("quality.passed", not failed_names)
            if failed_names:
                checking.set_attribute("quality.failed_checks", failed_names)
        self._on_checks(backend.key, output, checks, seconds * 1000)
        return checks

    async def shadow(
        self, backend: ModelBackend, req: RouteRequest, deadline: float, primary: str
    ) -> ModelOutput:
        """A shadow copy: one attempt on the first endpoint that is serving with a CLOSED
        circuit, in a span of its own. It takes no half-open probe, spends no retry budget and
        records nothing in any breaker, so a failing shadow never changes how real traffic
        is routed."""
        # Started from the request's context even though its span has ended by now (the copy
        # runs after the answer): the sampler follows the request's sampled flag.
        outer = self.tracer.start_span(
            "shadow", attributes={"model": backend.key, "shadow.primary_model": primary}
        )
        try:
            output = await self._shadow_attempt(backend, req, deadline, outer)
            outer.set_attribute("shadow.outcome", "ok")
            return output
        except RouteError as exc:
            outer.set_attribute("shadow.outcome", REASONS.get(exc.code, "failed"))
            record_status(outer, exc.code)
            raise
        finally:
            outer.end()

    async def _shadow_attempt(
        self, backend: ModelBackend, req: RouteRequest, deadline: float, outer: trace.Span
    ) -> ModelOutput:
        for endpoint in backend.ordered():
            if not endpoint.serving or not endpoint.breaker.is_closed():
                continue
            timeout = deadline - self._clock()
            if timeout <= 0.001:
                raise RouteError(grpc.StatusCode.DEADLINE_EXCEEDED, "shadow deadline passed")
            span = self.tracer.start_span(
                "attempt",
                context=trace.set_span_in_context(outer),
                kind=SpanKind.CLIENT,
                attributes={
                    **attempt_attributes(backend, endpoint, req, timeout),
                    "attempt.role": "shadow",
                },
            )
            try:
                response = await call(backend, endpoint, req, timeout, span)
                record_status(span, None)
            except (grpc.aio.AioRpcError, CallFailed) as exc:
                record_status(span, exc.code())
                raise RouteError(exc.code(), f"shadow {backend.key}: {exc.details()}") from None
            finally:
                span.end()
            return parse_response(response)
        raise RouteError(
            grpc.StatusCode.UNAVAILABLE,
            f"shadow {backend.key} has no serving endpoint with a closed circuit",
        )


def _failed_call(
    backend: ModelBackend,
    endpoint: Endpoint,
    exc: grpc.aio.AioRpcError | CallFailed,
    seconds: float,
) -> Attempt:
    code = exc.code()
    error = RouteError(code, f"{backend.key}: {exc.details()}")
    reason = REASONS.get(code, code.name.lower())
    return Attempt(
        backend.key, endpoint.target, Outcome.FAILED, reason, seconds * 1000, error=error
    )


def _fail_over(attempt: Attempt, progress: Progress) -> Attempt:
    """A failed call's attempt, for the next endpoint or model to take over; or the error
    for the caller when failing over is wrong: INVALID_ARGUMENT is the caller's fault, and
    once pieces of an answer have gone to the caller another answer would not continue it."""
    assert attempt.error is not None
    if attempt.error.code == grpc.StatusCode.INVALID_ARGUMENT:
        raise attempt.error
    if progress.pieces_sent:
        raise RouteError(
            attempt.error.code,
            f"{attempt.error.message} (after {progress.pieces_sent} pieces of the answer; "
            "not retried)",
        )
    return attempt


def _ended(span: trace.Span, attempt: Attempt) -> Attempt:
    """The attempt's span, closed with its outcome."""
    record_status(span, attempt.error.code if attempt.error else None)
    span.set_attribute("attempt.outcome", attempt.outcome.value)
    if attempt.reason:
        span.set_attribute("attempt.reason", attempt.reason)
    span.end()
    return attempt


def _give_up(req: RouteRequest, attempts: list[Attempt]) -> Dispatched:
    """No attempt answered well: the first answer that merely failed a check beats no
    answer; else RESOURCE_EXHAUSTED when every model refused for load, UNAVAILABLE otherwise,
    listing every attempt."""
    marked = next((a for a in attempts if a.failed_quality), None)
    if marked is not None:
        return Dispatched(marked, tuple(attempts))
    tried = "; ".join(f"{a.model}@{a.endpoint or '-'}: {a.outcome} ({a.reason})" for a in attempts)
    errors = [a.error for a in attempts if a.error is not None]
    if (
        errors
        and errors[-1].code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and all(a.reason in ("overloaded", "unsupported_task") for a in attempts)
    ):
        raise RouteError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"every model refused: {tried}; last: {errors[-1].message}",
        )
    raise RouteError(
        grpc.StatusCode.UNAVAILABLE, f"no model could serve {req.task}: tried {tried or 'nothing'}"
    )
