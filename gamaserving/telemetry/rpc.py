"""`rpc.server.call.duration` under the current semantic conventions, for unary methods.
Health and reflection stay out: probes would drown the signal."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.metrics import Meter

SKIPPED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of unary RPCs handled by this server",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or handler.unary_unary is None or method.startswith(SKIPPED):
            return handler
        inner = handler.unary_unary
        service, name = split_method(method)
        histogram = self.duration

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            status = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                code = context.code()
                status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                histogram.record(
                    time.perf_counter() - start,
                    {
                        "rpc.system.name": "grpc",
                        "rpc.method": f"{service}/{name}",
                        "rpc.response.status_code": status,
                    },
                )

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
