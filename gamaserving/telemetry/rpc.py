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

    def _start(
        self, rpc_method: str, attributes: dict[str, str], context: grpc.aio.ServicerContext
    ) -> tuple[Any, Any]:
        if self.tracer is None:
            return None, None
        parent = extract(context.invocation_metadata())
        span = self.tracer.start_span(
            rpc_method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def _wrap_stream(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        streaming_requests = handler.stream_stream is not None
        inner = handler.stream_stream or handler.unary_stream
        service, name = split_method(method)
        rpc_method = f"{service}/{name}"
        attributes = {"rpc.system.name": "grpc", "rpc.method": rpc_method}
        histogram = self.duration

        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start = time.perf_counter()
            code: grpc.StatusCode | None = None
            span, token = self._start(rpc_method, attributes, context)
            try:
                async for response in inner(request, context):
                    yield response
            except BaseException as exc:
                code = _status(context)
                if span is not None and isinstance(exc, Exception) and span.is_recording():
                    span.record_exception(exc)
                raise
            finally:
                if span is not None:
                    # A stream closed from elsewhere finishes in another context.
                    with contextlib.suppress(ValueError):
                        otel_context.detach(token)
                    record_status(span, code)
                    span.end()
                if histogram is not None:
                    status = code.name if code is not None else "OK"
                    histogram.record(time.perf_counter() - start, "grpc", rpc_method, status)

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
        service, name = split_method(method)
        rpc_method = f"{service}/{name}"
        attributes = {"rpc.system.name": "grpc", "rpc.method": rpc_method}
        histogram, tracer = self.duration, self.tracer

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code: grpc.StatusCode | None = None
            span = token = None
            if tracer is not None:
                parent = extract(context.invocation_metadata())
                span = tracer.start_span(
                    rpc_method, context=parent, kind=SpanKind.SERVER, attributes=attributes
                )
                token = otel_context.attach(trace.set_span_in_context(span, parent))
            try:
                return await inner(request, context)
            except BaseException as exc:
                code = _status(context)
                if span is not None and isinstance(exc, Exception) and span.is_recording():
                    span.record_exception(exc)
                raise
            finally:
                if span is not None:
                    otel_context.detach(token)
                    record_status(span, code)
                    span.end()
                if histogram is not None:
                    status = code.name if code is not None else "OK"
                    histogram.record(time.perf_counter() - start, "grpc", rpc_method, status)

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
