"""The attempt loop: try the chosen model, then the fallback chain, within the caller's
deadline. Each attempt gets a share of the time left; unhealthy endpoints and open circuits
are skipped; retries to another endpoint of the same model spend the retry budget; an output
that fails a quality check counts as a failure and, where configured, moves on to the next
model. INVALID_ARGUMENT is the caller's fault and goes straight back to the caller."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import ModelOutput, parse_response
from gamaserving.telemetry.tracing import ChildSpan, child_span, inject, record_status
from router.backends.endpoint import Endpoint
from router.backends.model import ModelBackend
from router.backends.oip import MODEL_INFER, infer_request
from router.backends.streaming import (
    MODEL_STREAM_INFER,
    CallFailed,
    OnPiece,
    Progress,
    stream_infer,
)
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


@dataclass(frozen=True)
class Attempt:
    model: str
    endpoint: str
    outcome: str  # ok, skipped, failed
    reason: str = ""
    duration_ms: float = 0.0


@dataclass
class Outcome:
    output: ModelOutput
    model: str
    checks: list[Check]
    model_ms: float
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def method(req: RouteRequest) -> str:
    """Generated answers stream (Triton's ModelStreamInfer); the rest are unary."""
    return MODEL_STREAM_INFER if req.task == "describe" else MODEL_INFER


def attempt_attributes(
    backend: ModelBackend, endpoint: Endpoint, req: RouteRequest, timeout: float
) -> dict[str, str | float]:
    return {
        "model": backend.key,
        "server.address": endpoint.target,
        "rpc.method": method(req),
        "attempt.timeout_ms": round(timeout * 1000, 1),
    }


async def call(
    backend: ModelBackend,
    endpoint: Endpoint,
    req: RouteRequest,
    seconds: float,
    span: trace.Span,
    progress: Progress | None = None,
    on_piece: OnPiece | None = None,
    answer_seconds: float | None = None,
) -> pb.ModelInferResponse:
    """One call carrying the attempt span's trace context to the model server: ModelInfer
    with a deadline `seconds` away, or for a generated answer a stream whose first response
    is due within `seconds` and whose end within `answer_seconds`."""
    request = infer_request(backend.server_name, req)
    if method(req) == MODEL_STREAM_INFER:
        progress = progress or Progress()
        try:
            return await stream_infer(
                endpoint.stub,
                request,
                first_timeout=seconds,
                answer_seconds=max(seconds, answer_seconds or seconds),
                metadata=inject(span),
                progress=progress,
                on_piece=on_piece,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED or progress.first_response_s:
                raise
        # An OIP server without Triton's streaming RPC: the whole answer, unary.
        span.set_attribute("rpc.method", MODEL_INFER)
    return await endpoint.stub.ModelInfer(  # type: ignore[no-any-return]
        request, timeout=seconds, metadata=inject(span)
    )


class Dispatcher:
    def __init__(
        self,
        on_checks: Callable[[str, ModelOutput, list[Check], float], None],
        clock: Callable[[], float] = time.monotonic,
        on_call: Callable[[str, str, float, str, str], None] | None = None,
    ) -> None:
        self._on_checks = on_checks
        self.on_call = on_call
        self.tracer: Tracer = trace.NoOpTracer()
        self._clock = clock

    async def run(
        self,
        route: RouteSettings,
        req: RouteRequest,
        chain: list[ModelBackend],
        deadline: float,
        on_piece: OnPiece | None = None,
    ) -> Outcome:
        """With `on_piece`, a generated answer's pieces go to the caller as they come, and
        once one has gone, a failure ends the request instead of failing over."""
        reserve = max(RESERVE_MIN, RESERVE_SHARE * (deadline - self._clock()))
        attempts: list[Attempt] = []
        marked: Outcome | None = None  # an answer that failed quality, kept as a last resort
        last_error: RouteError | None = None
        for index, backend in enumerate(chain):
            if backend.can(req.task) is False:
                attempts.append(Attempt(backend.key, "", "skipped", "unsupported_task"))
                continue
            backend.budget.on_request()
            tried = False
            for endpoint in backend.ordered():
                if not endpoint.serving:
                    attempts.append(Attempt(backend.key, endpoint.target, "skipped", "unhealthy"))
                    continue
                if not endpoint.breaker.allow():
                    attempts.append(
                        Attempt(backend.key, endpoint.target, "skipped", "circuit_open")
                    )
                    continue
                # From here the permit is settled on every path: recorded with an outcome,
                # or released when the call never happened or never finished.
                if tried and not backend.budget.try_spend():
                    endpoint.breaker.release()
                    attempts.append(
                        Attempt(backend.key, endpoint.target, "skipped", "retry_budget")
                    )
                    break
                remaining = deadline - self._clock() - reserve
                if remaining <= 0.001:
                    endpoint.breaker.release()
                    attempts.append(Attempt(backend.key, endpoint.target, "skipped", "deadline"))
                    return self._give_up(req, attempts, marked, last_error)
                timeout = min(backend.settings.timeout_ms / 1000, remaining / (len(chain) - index))
                tried = True
                started = self._clock()
                endpoint.in_flight += 1
                span = child_span(
                    self.tracer,
                    "attempt",
                    kind=SpanKind.CLIENT,
                    attributes=attempt_attributes(backend, endpoint, req, timeout),
                )
                progress = Progress()
                try:
                    response = await call(
                        backend,
                        endpoint,
                        req,
                        timeout,
                        span,
                        progress,
                        on_piece,
                        deadline - self._clock() - reserve,
                    )
                except (grpc.aio.AioRpcError, CallFailed) as exc:
                    seconds = self._clock() - started
                    reason = REASONS.get(exc.code(), exc.code().name.lower())
                    record_status(span, exc.code())
                    span.set_attributes({"attempt.outcome": "failed", "attempt.reason": reason})
                    span.end()
                    if self.on_call is not None:
                        self.on_call(
                            backend.key, endpoint.target, seconds, exc.code().name, method(req)
                        )
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        endpoint.breaker.record(True, seconds)
                        raise RouteError(exc.code(), f"{backend.key}: {exc.details()}") from None
                    endpoint.breaker.record(False, seconds)
                    if progress.pieces_sent:
                        # The caller has part of the answer: another model's would not
                        # continue it.
                        raise RouteError(
                            exc.code(),
                            f"{backend.key}: {exc.details()} (after {progress.pieces_sent} "
                            "pieces of the answer; not retried)",
                        ) from None
                    attempts.append(
                        Attempt(backend.key, endpoint.target, "failed", reason, seconds * 1000)
                    )
                    last_error = RouteError(exc.code(), f"{backend.key}: {exc.details()}")
                    continue
                except BaseException:
                    # Cancelled by the caller: no outcome to judge, so the permit goes back.
                    endpoint.breaker.release()
                    span.end()
                    raise
                finally:
                    endpoint.in_flight -= 1
                seconds = self._clock() - started
                if self.on_call is not None:
                    self.on_call(backend.key, endpoint.target, seconds, "OK", method(req))
                record_status(span, None)
                output = parse_response(response)
                with ChildSpan(
                    self.tracer, "validate", attributes={"model": backend.key}
                ) as checking:
                    checks = validate(req.task, output, backend.info, route.quality, seconds * 1000)
                    failed_names = [c.name for c in checks if not c.passed]
                    checking.set_attribute("quality.passed", not failed_names)
                    if failed_names:
                        checking.set_attribute("quality.failed_checks", failed_names)
                self._on_checks(backend.key, output, checks, seconds * 1000)
                failed = [c for c in checks if not c.passed]
                # A generated answer's responsiveness is its first response, not its length.
                endpoint.breaker.record(not failed, progress.first_response_s or seconds)
                if failed and route.quality.on_failure == "fallback" and not progress.pieces_sent:
                    reason = f"quality:{failed[0].name}"
                    span.set_attributes({"attempt.outcome": "failed", "attempt.reason": reason})
                    span.end()
                    attempts.append(
                        Attempt(backend.key, endpoint.target, "failed", reason, seconds * 1000)
                    )
                    if marked is None:
                        marked = Outcome(output, backend.key, checks, seconds * 1000)
                    break  # another endpoint of the same model would answer alike
                span.set_attribute("attempt.outcome", "ok")
                span.end()
                attempts.append(Attempt(backend.key, endpoint.target, "ok", "", seconds * 1000))
                return Outcome(output, backend.key, checks, seconds * 1000, attempts)
        return self._give_up(req, attempts, marked, last_error)

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
            if not endpoint.serving or not endpoint.breaker.admits():
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

    @staticmethod
    def _skip(model: str, target: str, reason: str) -> Attempt:
        trace.get_current_span().add_event(
            "skipped", {"model": model, "server.address": target, "reason": reason}
        )
        return Attempt(model, target, "skipped", reason)

    def _give_up(
        self,
        req: RouteRequest,
        attempts: list[Attempt],
        marked: Outcome | None,
        last: RouteError | None,
    ) -> Outcome:
        if marked is not None:
            # Every model failed; the first answer that merely failed a check beats no answer.
            marked.attempts = attempts
            return marked
        tried = "; ".join(
            f"{a.model}@{a.endpoint or '-'}: {a.outcome} ({a.reason})" for a in attempts
        )
        if (
            last is not None
            and last.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and all(a.reason in ("overloaded", "unsupported_task") for a in attempts)
        ):
            raise RouteError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"every model refused: {tried}")
        raise RouteError(
            grpc.StatusCode.UNAVAILABLE,
            f"no model could serve {req.task}: tried {tried or 'nothing'}",
        )
