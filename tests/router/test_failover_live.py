"""Failover against real model-server processes under steady concurrent load."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc

from gamaserving.router.v1 import router_pb2 as rpb
from tests.router.conftest import LiveRouter, base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.processes import ServerProcess, free_port, modelserver

CLIP = wav(0.5)


async def steady_load(
    router: LiveRouter, seconds: float, clients: int, deadline_s: float
) -> list[tuple[float, float, Any]]:
    """`clients` closed-loop callers for `seconds`: (start, end, response or error) each."""
    results: list[tuple[float, float, Any]] = []
    stop = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                out: Any = await router.process(rpb.TASK_EMBED, CLIP, deadline_s=deadline_s)
            except grpc.aio.AioRpcError as exc:
                out = exc
            results.append((t0, time.monotonic(), out))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


def embed_route(primary: list[str], fallback: list[str], **model: Any) -> dict[str, Any]:
    cfg = base_config(
        {"primary": primary, "fallback": fallback},
        embed={"primary": "primary", "fallbacks": ["fallback"]},
    )
    cfg["models"]["primary"].update(model_name="wav2vec2", **model)
    cfg["models"]["fallback"].update(model_name="gama")
    return cfg


async def test_sigkill_of_the_primary_gives_no_client_errors(
    tiny_models: Path, model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    with modelserver(tiny_models / "wav2vec2", tmp_path) as primary:
        cfg = embed_route([primary.address], [model_servers["gama"].address])
        async with live_router(cfg, tmp_path) as router:
            load = asyncio.ensure_future(steady_load(router, 3.0, clients=8, deadline_s=5))
            await asyncio.sleep(1.0)
            assert primary.proc is not None
            killed_at = time.monotonic()
            primary.proc.kill()
            (endpoint,) = router.core.state.backends["primary"].endpoints  # type: ignore[union-attr]
            while endpoint.serving:  # the router's health Watch sees the death
                endpoint.health_changed.clear()
                await asyncio.wait_for(endpoint.health_changed.wait(), 10)
            known_dead = time.monotonic()
            results = await load
    errors = [r for _, _, r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    # Ordered by events, not by windows around them: answered before the kill, the primary
    # served; started once the router knew it dead, the fallback did.
    before = [r for _, end, r in results if end < killed_at]
    after = [r for start, _, r in results if start > known_dead]
    assert before and all(r.route.model == "primary" for r in before)
    assert after and all(r.route.model == "fallback" for r in after)
    assert any(r.route.fallback_used for r in after)
    assert router.core.stats.fallbacks  # counted by reason


async def test_sigstop_answers_within_deadline_opens_and_recloses_the_circuit(
    tiny_models: Path, model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    breaker = {
        "window": 10,
        "min_calls": 3,
        "failure_rate": 0.5,
        "open_seconds": 1.0,
        "half_open_probes": 2,
    }
    with modelserver(tiny_models / "wav2vec2", tmp_path) as primary:
        assert primary.proc is not None
        pid = primary.proc.pid
        cfg = embed_route(
            [primary.address], [model_servers["gama"].address], circuit_breaker=breaker
        )
        async with live_router(cfg, tmp_path) as router:
            changes = router.core.stats.circuit_changes
            load = asyncio.ensure_future(steady_load(router, 7.0, clients=4, deadline_s=1.5))
            await asyncio.sleep(1.0)
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(3.0)
                assert changes[("primary", primary.address, "open")] >= 1
            finally:
                os.kill(pid, signal.SIGCONT)
            continued = time.monotonic()
            results = await load
    # Every caller had a 1.5 s deadline: no error means every answer came within it.
    errors = [r for _, _, r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert changes[("primary", primary.address, "half_open")] >= 1
    assert changes[("primary", primary.address, "closed")] >= 1
    late = [r for t, _, r in results if t > continued]
    assert late and any(r.route.model == "primary" for r in late), "traffic never returned"


async def test_total_primary_failure_sends_at_most_1_2x_to_the_primary(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    never_open = {"window": 1000, "min_calls": 1000}
    async with (
        fault_server("wav2vec2", mode="unavailable") as (a, addr_a),
        fault_server("wav2vec2", mode="unavailable") as (b, addr_b),
    ):
        cfg = embed_route(
            [addr_a, addr_b],
            [model_servers["gama"].address],
            circuit_breaker=never_open,
            retry_budget={"ratio": 0.2, "max_tokens": 2},
        )
        async with live_router(cfg, tmp_path) as router:
            await router.all_serving()  # every request tries the failing primary's endpoints
            n = 300
            sem = asyncio.Semaphore(10)

            async def one() -> rpb.ProcessResponse:
                async with sem:
                    return await router.process(rpb.TASK_EMBED, CLIP)

            responses = await asyncio.gather(*(one() for _ in range(n)))
    assert all(
        r.route.model == "fallback" and r.route.fallback_reason == "unavailable" for r in responses
    )
    sent = a.received + b.received
    assert n <= sent <= 1.2 * n + 2, sent


async def test_every_model_down_gives_unavailable_within_the_deadline(tmp_path: Path) -> None:
    closed = [f"127.0.0.1:{free_port()}"]
    async with fault_server("gama", mode="slow") as (_, slow):
        cfg = embed_route(closed, [slow])
        async with live_router(cfg, tmp_path, metadata_wait=0.5) as router:
            for deadline in (0.5, 1.0):
                try:
                    await router.process(rpb.TASK_EMBED, CLIP, deadline_s=deadline)
                    raise AssertionError("expected UNAVAILABLE")
                except grpc.aio.AioRpcError as exc:
                    # UNAVAILABLE, not DEADLINE_EXCEEDED: the router answered inside the
                    # caller's deadline (a client-side clock would add transport jitter).
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    details = exc.details() or ""
                    assert (
                        "primary@" in details and "unhealthy" in details and "fallback@" in details
                    )
