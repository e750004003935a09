"""Per-call telemetry for unary RPCs in one interceptor: a SERVER span continuing the caller's
W3C trace context, and `rpc.server.call.duration` under the current semantic conventions.
Health and reflection stay out: probes would drown the signal."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.metrics import Meter
from opentelemetry.trace import SpanKind, Tracer

SKIPPED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


def _status(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """One wrapper per method, built once and cached: the per-call cost is one coroutine."""

    def __init__(self, tracer: Tracer | None, meter: Meter | None) -> None:
        # Imported here: tracing imports this module for SKIPPED and split_method.
        from gamaserving.telemetry.tracing import extract, record_status

        self._extract = extract
        self._record_status = record_status
        self.tracer = tracer
        self.duration = (
            meter.create_histogram(
                "rpc.server.call.duration",
                unit="s",
                description="Duration of unary RPCs handled by this server",
            )
            if meter is not None
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
        if handler is None or handler.unary_unary is None or method.startswith(SKIPPED):
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler.unary_unary:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler.unary_unary, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        service, name = split_method(method)
        rpc_method = f"{service}/{name}"
        attributes = {"rpc.system.name": "grpc", "rpc.method": rpc_method}
        histogram, tracer, extract, record_status = (
            self.duration,
            self.tracer,
            self._extract,
            self._record_status,
        )

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            status = "OK"
            span_cm = (
                tracer.start_as_current_span(
                    rpc_method,
                    context=extract(context.invocation_metadata()),
                    kind=SpanKind.SERVER,
                    attributes=attributes,
                )
                if tracer is not None
                else None
            )
            span = span_cm.__enter__() if span_cm is not None else None
            try:
                response = await inner(request, context)
            except BaseException as exc:
                code = _status(context)
                status = code.name
                if span is not None:
                    record_status(span, code)
                if span_cm is not None:
                    span_cm.__exit__(type(exc), exc, exc.__traceback__)
                    span_cm = None
                raise
            finally:
                if histogram is not None:
                    histogram.record(
                        time.perf_counter() - start,
                        {**attributes, "rpc.response.status_code": status},
                    )
            if span is not None:
                record_status(span, None)
            if span_cm is not None:
                span_cm.__exit__(None, None, None)
            return response

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
