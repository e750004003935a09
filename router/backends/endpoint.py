"""One configured target: its channel, its health Watch stream and its circuit breaker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import AsyncRetrying, retry_if_exception_type

from gamaserving.grpcutil import KEEPALIVE_TIME_MS
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from gamaserving.tls import channel
from router.backends.reconnect import reconnect_wait
from router.config import ModelSettings
from router.failover.circuit import CircuitBreaker, State

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING


def channel_options(settings: ModelSettings, max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.lb_policy_name", settings.balancing),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # A frozen server keeps its TCP connection open: keepalive pings find it. Model
        # servers accept pings this often (gamaserving.grpcutil.aio_server).
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Keep pinging an idle connection (gRPC otherwise slows to one ping a minute after
        # two without data, and a frozen server goes unnoticed that long).
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect quickly after a restart, so a recovered server gets traffic back.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


WATCH_FIRST_S, WATCH_MAX_S = 0.2, 2.0


class _StreamFailed(Exception):
    """The health Watch ended before its first update."""


class _Closed(Exception):
    """The endpoint is closing: its Watch was cancelled on purpose."""


class Endpoint:
    def __init__(
        self,
        model: str,
        target: str,
        settings: ModelSettings,
        max_message_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        on_circuit: Callable[[str, str, State, State], None] = lambda *change: None,
        on_health: Callable[[], None] = lambda: None,
    ) -> None:
        self.model = model
        self._on_health = on_health
        self.target = target
        self.settings = settings
        self.channel = channel(target, settings.tls, channel_options(settings, max_message_bytes))
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.breaker = CircuitBreaker(
            settings.circuit_breaker,
            clock,
            on_change=lambda old, new: on_circuit(model, target, old, new),
        )
        self.serving: bool | None = None  # None until the first health answer
        self.in_flight = 0
        self._watch: asyncio.Task[None] | None = None
        self.health_changed = asyncio.Event()

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(
            self._watch_health(), name=f"watch {self.target}"
        )

    def _set_serving(self, serving: bool) -> None:
        if serving != self.serving:
            log.info(
                "endpoint %s %s: %s",
                self.model,
                self.target,
                "SERVING" if serving else "NOT_SERVING",
            )
            self.serving = serving
            self.health_changed.set()
            self._on_health()

    async def _watch_health(self) -> None:
        """Watch for good; after a stream that worked, the backoff starts afresh."""
        request = health_pb2.HealthCheckRequest(service=self.settings.health_service)
        try:
            while True:
                async for attempt in AsyncRetrying(
                    wait=reconnect_wait(WATCH_FIRST_S, WATCH_MAX_S),
                    retry=retry_if_exception_type(_StreamFailed),
                ):
                    with attempt:
                        await self._watch_stream(request)
                await asyncio.sleep(WATCH_FIRST_S)
        except _Closed:
            return

    async def _watch_stream(self, request: health_pb2.HealthCheckRequest) -> None:
        updates = 0
        try:
            async for update in self._health.Watch(request):
                updates += 1
                self._set_serving(update.status == SERVING)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and self._watch is None:
                raise _Closed from exc
        self._set_serving(False)  # the stream broke, or the server ended it (draining)
        if not updates:
            raise _StreamFailed(self.target)

    async def close(self) -> None:
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.channel.close()
