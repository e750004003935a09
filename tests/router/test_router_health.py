"""Router health: readiness follows its backends and drains on SIGTERM; liveness is separate."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gamaserving.router.v1 import router_pb2 as rpb
from tests.router.conftest import LiveRouter, base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.processes import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def status(router: LiveRouter, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(router.channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def until(router: LiveRouter, service: str, want: int, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while (s := await status(router, service)) != want:
        assert time.monotonic() < deadline, f"{service} stayed {s}"
        await asyncio.sleep(0.05)


async def test_readiness_follows_the_backends(tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config({"m": [f"127.0.0.1:{port}"]}, tag={"primary": "m"})
    async with live_router(cfg, tmp_path, metadata_wait=0.2) as router:
        assert await status(router, "readiness") == NOT_SERVING
        assert await status(router, "liveness") == SERVING
        async with fault_server("m", port=port):
            await until(router, "readiness", SERVING)
            assert await status(router, "gamaserving.router.v1.AudioRouter") == SERVING
        await until(router, "readiness", NOT_SERVING)
        assert await status(router, "") == SERVING


async def test_drain_finishes_in_flight_and_refuses_new_work(tmp_path: Path) -> None:
    async with fault_server("m", delay=0.5) as (model, address):
        cfg = base_config({"m": [address]}, tag={"primary": "m"})
        async with live_router(cfg, tmp_path) as router:
            await until(router, "readiness", SERVING)
            in_flight = [
                asyncio.ensure_future(router.process(rpb.TASK_TAG, wav(0.3))) for _ in range(4)
            ]
            await asyncio.sleep(0.1)
            drain = asyncio.ensure_future(router.server.drain(grace=5))
            await asyncio.sleep(0.05)
            assert await status(router, "readiness") == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.process(rpb.TASK_TAG, wav(0.3))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in (
                info.value.details() or ""
            )
            answers = await asyncio.gather(*in_flight)
            assert all(a.route.model == "m" for a in answers)
            await drain
            assert model.received == 4
