"""Shadow copies go through the dispatcher: their own span (with the request's trace id and
an attempt under it), their own metric labels, and never a mark in any circuit breaker."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gamaserving.router.v1 import router_pb2 as rpb
from router.failover.circuit import State
from router.requests import RouteRequest
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server


def _config(primary: str, shadow: str) -> dict:  # type: ignore[type-arg]
    cfg = base_config(
        {"primary": [primary], "shadow": [shadow]},
        embed={
            "primary": "primary",
            "experiment": {
                "name": "e",
                "seed": "s",
                "arms": [{"name": "control", "model": "primary", "weight": 1.0}],
                "shadow": {"model": "shadow", "percent": 100, "max_concurrency": 64},
            },
        },
    )
    breaker = {"window": 4, "min_calls": 2, "open_seconds": 60}
    for model in cfg["models"].values():
        model["circuit_breaker"] = breaker
    return cfg


async def test_a_failing_shadow_opens_no_circuit_and_counts_as_shadow(tmp_path: Path) -> None:
    async with (
        fault_server("primary") as (primary, a),
        fault_server("shadow", mode="internal") as (shadow, b),
    ):
        cfg = _config(a, b)
        cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
        async with live_router(cfg, tmp_path) as router:
            await router.all_serving()
            for i in range(12):
                r = await router.process(rpb.TASK_EMBED, wav(0.2), user_id=f"u{i}")
                assert r.route.model == "primary" and r.route.shadowed
            await router.core.shadow.drain()
            assert shadow.received == 12  # every copy went (a failing shadow stays closed)
            assert {s for _, _, s, _ in router.core.circuits()} == {State.CLOSED}
            stats = router.core.shadow.stats[("primary", "shadow")]
            assert stats.failed == 12 and stats.compared == 0
            # The shadow's calls are not requests of the router: none counted under `shadow`.
            assert not [k for k in router.core.stats.requests if k[0] == "shadow"]
            assert primary.received == 12
            url = f"http://127.0.0.1:{router.server.metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
            assert re.search(
                r'gamaserving_router_shadow_requests_total\{[^}]*outcome="failed"'
                r'[^}]*shadow_model="shadow"[^}]*\} 12',
                text,
            ), [line for line in text.splitlines() if "shadow" in line]
            calls = [line for line in text.splitlines() if line.startswith("rpc_client_call")]
            assert calls and not [line for line in calls if 'model="shadow"' in line]


async def test_shadow_copies_are_spans_of_their_own_in_the_request_trace(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with fault_server("primary") as (_, a), fault_server("shadow") as (_, b):
        async with live_router(_config(a, b), tmp_path) as router:
            router.core.dispatcher.tracer = provider.get_tracer("test")
            await router.all_serving()
            parent = provider.get_tracer("test").start_span("caller")
            with trace.use_span(parent, end_on_exit=True):
                request = RouteRequest(request_id="r-1", task="embed", audio=wav(0.2))
                result = await router.core.process(request, router.core.clock() + 5)
            assert result.shadowed
            await router.core.shadow.drain()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"caller", "attempt", "shadow"} <= set(spans)
    shadow_span = spans["shadow"]
    attempts = [s for s in exporter.get_finished_spans() if s.name == "attempt"]
    (shadow_attempt,) = [s for s in attempts if s.attributes.get("attempt.role") == "shadow"]
    assert shadow_span.context.trace_id == parent.get_span_context().trace_id
    assert shadow_span.parent is not None
    assert shadow_span.parent.span_id == parent.get_span_context().span_id
    assert shadow_attempt.parent is not None
    assert shadow_attempt.parent.span_id == shadow_span.context.span_id
    assert shadow_span.attributes["shadow.outcome"] == "ok"
    assert shadow_attempt.attributes["model"] == "shadow"
