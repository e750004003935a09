"""gRPC plumbing shared by both processes: one place where errors become statuses, and the
signals that stop a server."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from opentelemetry.trace import Tracer

if TYPE_CHECKING:
    from gamaserving.telemetry import Telemetry

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


# `<_io.BytesIO object at 0x7f...>`: a Python object's repr, which a library's error text can
# carry into a message; it means nothing to a caller and leaks addresses.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class StatusError(Exception):
    """An error with the status a client should see and a message it can act on."""

    def __init__(self, status: grpc.StatusCode, message: str) -> None:
        message = _OBJECT_REPR.sub("the input", message)
        super().__init__(message)
        self.status = status
        self.message = message


def grpc_errors(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """StatusError -> its status; anything unexpected -> INTERNAL, logged, never leaked."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await _abort(exc, context, method.__name__)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


async def _abort(exc: Exception, context: grpc.aio.ServicerContext, name: str) -> None:
    """The status a handler's exception becomes; never returns."""
    if isinstance(exc, StatusError):
        await context.abort(exc.status, exc.message)
    if isinstance(exc, grpc.aio.AbortError | grpc.RpcError):
        raise exc
    log.error("unexpected error in %s", name, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")


StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def stream_errors(method: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """`grpc_errors` for server-streaming methods: the stream ends with the error's status."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        try:
            async for response in method(self, request, context):
                yield response
        except Exception as exc:
            await _abort(exc, context, method.__name__)

    return wrapper


def stop_event() -> asyncio.Event:
    """Set on SIGTERM or SIGINT: the moment a server starts draining."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


# Clients (the router's channels to model servers) ping this often, with or without calls,
# so a frozen peer is found while its TCP connection stays open.
KEEPALIVE_TIME_MS = 10_000
# What a server accepts. gRPC's default (one ping per 5 minutes without data) answers a
# client pinging every 10 s with GOAWAY too_many_pings after a minute or so of idling,
# which breaks its health Watch stream and flaps the endpoint to NOT_SERVING.
MIN_PING_INTERVAL_MS = KEEPALIVE_TIME_MS // 2


def aio_server(
    max_message_bytes: int,
    tracer: Tracer | None = None,
    telemetry: Telemetry | None = None,
    guards: list[grpc.aio.ServerInterceptor] | None = None,
    min_ping_interval_ms: int = MIN_PING_INTERVAL_MS,
) -> grpc.aio.Server:
    """A grpc.aio server with message limits, per-call telemetry when either is given, and
    `guards` (authentication) inside the telemetry, so refused calls are measured too.
    It accepts keepalive pings as often as every `min_ping_interval_ms`."""
    from gamaserving.telemetry.rpc import TelemetryInterceptor

    interceptors = (
        [TelemetryInterceptor(tracer, telemetry)]
        if tracer is not None or telemetry is not None
        else []
    )
    interceptors += guards or []
    return grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, a server-side setting.
            ("grpc.http2.min_ping_interval_without_data_ms", min_ping_interval_ms),
        ],
    )


async def start_health_port(servicer: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with grpc.health.v1 only, for probes that cannot speak TLS (the
    kubelet's gRPC probes) while the main port requires it. It shares the main server's
    servicer, so both answer the same."""
    from grpc_health.v1 import health_pb2_grpc

    from gamaserving.tls import listen

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = listen(server, f"{host}:{port}", None)
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (health port)")
    await server.start()
    return server, int(bound)
