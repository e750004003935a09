"""Per-call telemetry in one interceptor: a SERVER span continuing the caller's W3C trace
context, and `rpc.server.call.duration` under the current semantic conventions. Unary calls
and server-streaming ones (ModelStreamInfer, ProcessStream: the span and the duration cover
the whole stream). Health and reflection stay out: probes would drown the signal."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer

from gamaserving.telemetry import SECONDS_BUCKETS, Telemetry
from gamaserving.telemetry.tracing import extract, record_status

SKIPPED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


def _status(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """One wrapper per method, built once and cached: the per-call cost is one coroutine.
    Spans are started and made current by hand: the SDK's context managers are generators
    and cost several microseconds a call."""

    def __init__(self, tracer: Tracer | None, telemetry: Telemetry | None) -> None:
        self.tracer = tracer
        self.duration = (
            telemetry.histogram(
                "rpc.server.call.duration",
                "s",
                "Duration of RPCs handled by this server (whole streams for streaming RPCs)",
                ("rpc.system.name", "rpc.method", "rpc.response.status_code"),
                SECONDS_BUCKETS,
            )
            if telemetry is not None
            else None
        )
        self._cache: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(SKIPPED):
            return handler
        inner = handler.unary_unary or handler.unary_stream or handler.stream_stream
        if inner is None:
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is inner:
            return cached[1]
        wrapped = (
            self._wrap(method, handler)
            if handler.unary_unary is not None
            else self._wrap_stream(method, handler)
        )
        self._cache[method] = (inner, wrapped)
        return wrapped

    def _wrap_stream(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        streaming_requests = handler.stream_stream is not None
        inner = handler.stream_stream or handler.unary_stream
        rpc_method = "/".join(split_method(method))

        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            measured = _Call(self, rpc_method, context)
            try:
                async for response in inner(request, context):
                    yield response
            except BaseException as exc:
                measured.failed(exc)
                raise
            finally:
                measured.end()

        make = (
            grpc.stream_stream_rpc_method_handler
            if streaming_requests
            else grpc.unary_stream_rpc_method_handler
        )
        return make(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        rpc_method = "/".join(split_method(method))

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            measured = _Call(self, rpc_method, context)
            try:
                return await inner(request, context)
            except BaseException as exc:
                measured.failed(exc)
                raise
            finally:
                measured.end()

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Call:
    """One served call's span (made current) and duration; `end` records both."""

    __slots__ = ("code", "context", "histogram", "method", "span", "start", "token")

    def __init__(
        self, owner: TelemetryInterceptor, method: str, context: grpc.aio.ServicerContext
    ) -> None:
        self.start = time.perf_counter()
        self.method = method
        self.context = context
        self.histogram = owner.duration
        self.code: grpc.StatusCode | None = None
        self.span: Any = None
        self.token: Any = None
        if owner.tracer is not None:
            parent = extract(context.invocation_metadata())
            self.span = owner.tracer.start_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system.name": "grpc", "rpc.method": method},
            )
            self.token = otel_context.attach(trace.set_span_in_context(self.span, parent))

    def failed(self, exc: BaseException) -> None:
        self.code = _status(self.context)
        if self.span is not None and isinstance(exc, Exception) and self.span.is_recording():
            self.span.record_exception(exc)

    def end(self) -> None:
        if self.span is not None:
            # A stream closed from elsewhere finishes in another context.
            with contextlib.suppress(ValueError):
                otel_context.detach(self.token)
            record_status(self.span, self.code)
            self.span.end()
        if self.histogram is not None:
            status = self.code.name if self.code is not None else "OK"
            self.histogram.record(time.perf_counter() - self.start, "grpc", self.method, status)
