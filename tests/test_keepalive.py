"""Keepalive between the router and the model servers: the router's channels ping idle
connections so that a frozen server is found, and every server built by aio_server accepts
those pings. A gRPC server left at its defaults answers them with GOAWAY too_many_pings,
which ends the router's health Watch and flaps the endpoint to NOT_SERVING.

The shipped timing (a ping every 10 s) would make these tests minutes long; they keep its
ratio of client ping interval to the server's accepted minimum, scaled down."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gamaserving.grpcutil import KEEPALIVE_TIME_MS, MIN_PING_INTERVAL_MS, aio_server
from router.backends.endpoint import channel_options
from router.config import ModelSettings

SCALE = 50  # 10 s -> 200 ms
PING_MS = KEEPALIVE_TIME_MS // SCALE
IDLE_S = 4.0  # twenty pings


def _client_options() -> list[tuple[str, int | str]]:
    """The router's own channel options, with its keepalive period scaled down."""
    options = channel_options(ModelSettings(endpoints=["127.0.0.1:1"]), 1 << 20)
    assert ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS) in options
    scaled = {"grpc.keepalive_time_ms": PING_MS, "grpc.keepalive_timeout_ms": PING_MS * 5}
    return [(k, scaled.get(k, v)) for k, v in options]


async def _watch_while_idle(server: grpc.aio.Server) -> grpc.StatusCode | None:
    """Open a health Watch, let the connection idle, and return how the stream ended
    (None: it is still open, as it should be)."""
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=_client_options()
        ) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            try:
                await asyncio.wait_for(call.read(), IDLE_S)
            except TimeoutError:
                return None
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK  # ended without an error
    finally:
        await server.stop(None)


def test_the_shipped_server_minimum_accepts_the_routers_pings() -> None:
    assert MIN_PING_INTERVAL_MS <= KEEPALIVE_TIME_MS


@pytest.mark.asyncio
async def test_an_idle_watch_survives_the_routers_keepalive_pings() -> None:
    server = aio_server(1 << 20, min_ping_interval_ms=MIN_PING_INTERVAL_MS // SCALE)
    assert await _watch_while_idle(server) is None


@pytest.mark.asyncio
async def test_a_server_at_grpc_defaults_would_break_it() -> None:
    """The failure the options prevent, so the test above can tell them apart."""
    assert await _watch_while_idle(grpc.aio.server()) == grpc.StatusCode.UNAVAILABLE
