"""Both Prometheus endpoints, scraped after known traffic: documented names, units and
attributes, with counts that match the traffic."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gamaserving.router.v1 import router_pb2 as rpb
from tests.modelserver.conftest import live_server
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.prom import documented, family

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    text = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    )
    samples: Samples = {}
    for metric in text_string_to_metric_families(text):
        for s in metric.samples:
            labels = frozenset(
                (k, v) for k, v in s.labels.items() if not k.startswith("otel_scope")
            )
            samples[(s.name, labels)] = s.value
    return samples


async def scrape_until(
    port: int, condition: Callable[[Samples], bool], what: str, seconds: float = 10.0
) -> Samples:
    """Scrape until `condition` holds: for a gauge a background step updates (the scheduler's
    next pass, after the answer has gone), bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition(samples := await scrape(port)):
        if loop.time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def test_metrics_match_known_traffic(tiny_models: Path, tmp_path: Path) -> None:
    async with (
        live_server(tiny_models / "wav2vec2", settings={"metrics_port": 0}) as w2v,
        fault_server("faulty", mode="unavailable") as (_, faulty),
    ):
        address = f"127.0.0.1:{w2v.server.port}"
        cfg = base_config(
            {"wav2vec2": [address], "faulty": [faulty]},
            transcribe={"primary": "wav2vec2"},
            embed={"primary": "faulty", "fallbacks": ["wav2vec2"]},
        )
        cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
        async with live_router(cfg, tmp_path) as router:
            # Before every endpoint's first health answer, a fallback's reason is "unhealthy".
            await router.all_serving()
            for _ in range(5):
                await router.process(rpb.TASK_TRANSCRIBE, wav(0.5))
            for _ in range(3):
                assert (await router.process(rpb.TASK_EMBED, wav(0.5))).route.fallback_used
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError):
                    await router.stub.Process(rpb.ProcessRequest(task=rpb.TASK_EMBED))
            r = await scrape(router.server.metrics_port)
            assert w2v.server.telemetry is not None
            m = await scrape(w2v.server.telemetry.port)

    # Router: requests by model, arm, task and outcome; fallbacks by reason.
    assert (
        value(
            r,
            "gamaserving_router_requests_total",
            model="wav2vec2",
            task="transcribe",
            outcome="ok",
        )
        == 5
    )
    assert (
        value(r, "gamaserving_router_requests_total", model="wav2vec2", task="embed", outcome="ok")
        == 3
    )
    assert (
        value(
            r,
            "gamaserving_router_fallbacks_total",
            reason="unavailable",
            from_model="faulty",
            to_model="wav2vec2",
        )
        == 3
    )
    # RPC durations under the semantic-convention names, in seconds with second-scale buckets.
    process = "gamaserving.router.v1.AudioRouter/Process"
    assert (
        value(
            r,
            "rpc_server_call_duration_seconds_count",
            rpc_method=process,
            rpc_response_status_code="OK",
        )
        == 8
    )
    assert (
        value(
            r,
            "rpc_server_call_duration_seconds_count",
            rpc_method=process,
            rpc_response_status_code="INVALID_ARGUMENT",
        )
        == 2
    )
    assert value(r, "rpc_server_call_duration_seconds_bucket", rpc_method=process, le="0.005") > 0
    assert (
        value(
            r,
            "rpc_client_call_duration_seconds_count",
            server_address=address,
            rpc_response_status_code="OK",
        )
        == 8
    )
    assert (
        value(
            r,
            "rpc_client_call_duration_seconds_count",
            server_address=faulty,
            rpc_response_status_code="UNAVAILABLE",
        )
        == 3
    )
    assert (
        value(
            r,
            "gamaserving_router_request_duration_seconds_count",
            model="wav2vec2",
            task="transcribe",
        )
        == 5
    )
    assert value(r, "gamaserving_router_endpoint_serving", model="wav2vec2") == 1
    assert value(r, "gamaserving_router_circuit_state", model="wav2vec2", state="closed") == 1
    assert value(r, "gamaserving_router_circuit_state", model="wav2vec2", state="open") == 0
    assert value(r, "process_memory_usage_bytes") > 10_000_000
    assert not any(dict(ls).get("rpc_method", "").startswith("grpc.health") for _, ls in r)

    # Model server: requests, batches, queue and compute time; warm-up excluded.
    assert value(m, "gamaserving_modelserver_requests_total", task="transcribe", outcome="ok") == 5
    assert value(m, "gamaserving_modelserver_requests_total", task="embed", outcome="ok") == 3
    assert value(m, "gamaserving_modelserver_batch_size_sum") == 8
    assert value(m, "gamaserving_modelserver_queue_duration_seconds_count") == 8
    assert value(m, "gamaserving_modelserver_compute_duration_seconds_count") >= 1
    assert value(m, "gamaserving_modelserver_queue_depth") == 0
    infer = "inference.GRPCInferenceService/ModelInfer"
    assert value(m, "rpc_server_call_duration_seconds_count", rpc_method=infer) == 8
    assert value(m, "process_cpu_time_seconds_total", cpu_mode="user") > 0


async def test_model_server_counts_errors_by_kind(tiny_models: Path) -> None:
    from tests.support.oip import infer_request

    async with live_server(tiny_models / "wav2vec2", settings={"metrics_port": 0}) as live:
        with pytest.raises(grpc.aio.AioRpcError):
            await live.stub.ModelInfer(infer_request("wav2vec2", audio=b"junk"))
        assert live.server.telemetry is not None
        m = await scrape(live.server.telemetry.port)
    assert value(m, "gamaserving_modelserver_requests_total", outcome="invalid_argument") == 1
    infer = "inference.GRPCInferenceService/ModelInfer"
    assert (
        value(
            m,
            "rpc_server_call_duration_seconds_count",
            rpc_method=infer,
            rpc_response_status_code="INVALID_ARGUMENT",
        )
        == 1
    )


async def test_generation_metrics_count_what_was_generated(tiny_models: Path) -> None:
    from tests.support.oip import infer_request, params

    async with live_server(tiny_models / "gama", settings={"metrics_port": 0}) as live:
        made = []
        for i, tokens in enumerate((3, 5, 7)):
            response = await live.stub.ModelInfer(
                infer_request(
                    "gama",
                    audio=wav(0.5),
                    task="describe",
                    prompt="What do you hear?",
                    request_id=f"g{i}",
                    max_new_tokens=tokens,
                )
            )
            made.append(params(response))
        assert live.server.telemetry is not None
        occupancy = "gamaserving_modelserver_generation_batch_occupancy"
        # The last sequence leaves the batch on the scheduler's pass after its answer went.
        m = await scrape_until(
            live.server.telemetry.port, lambda m: value(m, occupancy) == 0, "an empty batch"
        )
        assert live.server.core.plan is not None
        planned = live.server.core.plan.kv_budget_tokens
    outputs = sum(int(p["output_tokens"]) for p in made)  # type: ignore[call-overload]
    inputs = sum(int(p["input_tokens"]) for p in made)  # type: ignore[call-overload]
    assert value(m, "gen_ai_server_time_to_first_token_seconds_count") == 3
    assert value(m, "gen_ai_server_time_per_output_token_seconds_count") == 3
    tokens = "gamaserving_modelserver_generation_tokens_sum"
    assert value(m, tokens, gen_ai_token_type="output") == outputs
    assert value(m, tokens, gen_ai_token_type="input") == inputs
    assert value(m, "gamaserving_modelserver_generation_finished_total", reason="length") == 3
    # The export's `auto`: what the plan left for the KV cache on this machine.
    assert value(m, "gamaserving_modelserver_generation_kv_budget") == planned > 16384
    # Warm-up decodes too: the counter is what the model spent.
    assert value(m, "gamaserving_modelserver_generation_decoded_tokens_total") > outputs


async def test_every_exposed_metric_is_documented(tiny_models: Path, tmp_path: Path) -> None:
    known = documented()
    async with (
        live_server(tiny_models / "wav2vec2", settings={"metrics_port": 0}) as w2v,
        live_server(tiny_models / "gama", settings={"metrics_port": 0}) as gama,
    ):
        cfg = base_config(
            {
                "wav2vec2": [f"127.0.0.1:{w2v.server.port}"],
                "gama": [f"127.0.0.1:{gama.server.port}"],
            },
            transcribe={"primary": "wav2vec2"},
            describe={"primary": "gama", "quality": {"slo_ms": 10_000}},
        )
        cfg["telemetry"] = {"prometheus_host": "127.0.0.1", "prometheus_port": 0}
        async with live_router(cfg, tmp_path) as router:
            await router.process(rpb.TASK_TRANSCRIBE, wav(0.5))
            await router.process(rpb.TASK_DESCRIBE, wav(0.5), prompt="Hi")
            assert w2v.server.telemetry is not None and gama.server.telemetry is not None
            exposed = (
                set(await scrape(router.server.metrics_port))
                | set(await scrape(w2v.server.telemetry.port))
                | set(await scrape(gama.server.telemetry.port))
            )
            usage = "gen_ai_client_token_usage_count"
            assert "gen_ai_client_token_usage_count" in {n for n, _ in exposed}, usage
    families = {family(name) for name, _ in exposed} - {"target_info"}
    assert families and not families - known, f"undocumented: {sorted(families - known)}"
