"""One trace from the client through the router to the model server, received by a real
OTLP/gRPC receiver built from opentelemetry-proto's service definitions."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gamaserving.router.v1 import router_pb2 as rpb
from gamaserving.router.v1 import router_pb2_grpc as rpb_grpc
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.processes import ServerProcess, free_port, modelserver_args, router_args


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> Any:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace": span.trace_id.hex(),
                            "id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "links": len(span.links),
                        }
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    collector = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield collector, port
    await server.stop(0)


@pytest.fixture
def traced_model(
    tiny_models: Path,
    tmp_path: Path,
    receiver: tuple[Receiver, int],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Receiver, ServerProcess]]:
    """Processes started from here on export spans to the receiver within 200 ms; a wav2vec2
    model server is started (tests stop it themselves: its spans flush on shutdown)."""
    collector, otlp_port = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    port = free_port()
    model = ServerProcess(
        modelserver_args(tiny_models / "wav2vec2", port), tmp_path / "m.log", port
    ).start()
    yield collector, model
    model.stop()


async def test_one_trace_across_router_and_model_server(
    tmp_path: Path, traced_model: tuple[Receiver, ServerProcess]
) -> None:
    collector, model = traced_model
    rport = free_port()
    async with fault_server("wav2vec2", mode="unavailable") as (_, broken):
        config = {
            "models": {
                "broken": {"endpoints": [broken], "model_name": "wav2vec2"},
                "wav2vec2": {"endpoints": [model.address]},
            },
            "routes": {
                "transcribe": {
                    "primary": "broken",
                    "fallbacks": ["wav2vec2"],
                    "experiment": {
                        "name": "exp",
                        "seed": "s",
                        "arms": [{"name": "control", "model": "broken", "weight": 1.0}],
                    },
                }
            },
            "results": {"url": "sqlite:///results.sqlite"},
        }
        (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
        router = ServerProcess(
            router_args(tmp_path / "router.yaml", rport), tmp_path / "r.log", rport
        ).start()
        try:
            await asyncio.to_thread(model.wait_status)
            await asyncio.to_thread(router.wait_status)
            trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
            async with grpc.aio.insecure_channel(router.address) as channel:
                stub = rpb_grpc.AudioRouterStub(channel)
                response = await stub.Process(
                    rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_TRANSCRIBE),
                    metadata=(("traceparent", f"00-{trace_id}-{client_span}-01"),),
                    timeout=10,
                )
            assert response.route.fallback_used and response.route.model == "wav2vec2"
        finally:
            # Off the event loop: the receiver in this loop must answer the final flushes.
            await asyncio.to_thread(router.stop)
            await asyncio.to_thread(model.stop)
    assert router.wait() == 0 and model.wait() == 0  # spans are flushed on shutdown

    spans = [s for s in collector.spans if s["trace"] == trace_id]
    assert spans, [(s["service"], s["name"], s["trace"][:6]) for s in collector.spans][:20]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    (process,) = by_name["gamaserving.router.v1.AudioRouter/Process"]
    assert process["service"] == "router" and process["parent"] == client_span
    (assign,) = by_name["assign"]
    assert (assign["attributes"]["experiment"], assign["attributes"]["arm"]) == ("exp", "control")
    (validate,) = by_name["validate"]
    assert assign["parent"] == validate["parent"] == process["id"]
    failed, ok = sorted(by_name["attempt"], key=lambda s: s["attributes"]["attempt.outcome"])
    assert (
        failed["attributes"]["model"] == "broken"
        and failed["attributes"]["attempt.reason"] == "unavailable"
    )
    assert ok["attributes"]["model"] == "wav2vec2" and ok["attributes"]["attempt.outcome"] == "ok"
    assert failed["parent"] == ok["parent"] == process["id"]
    (infer,) = by_name["inference.GRPCInferenceService/ModelInfer"]
    assert infer["service"] == "modelserver" and infer["parent"] == ok["id"]
    for name in ("prepare", "queue", "batch_inference", "postprocess"):
        (child,) = by_name[name]
        assert child["service"] == "modelserver" and child["parent"] == infer["id"], name
    assert by_name["batch_inference"][0]["attributes"]["batch_size"] == 1
    # Health checks and reflection stay out of traces.
    assert not [
        s for s in collector.spans if "grpc.health" in s["name"] or "reflection" in s["name"]
    ]


async def test_a_sampled_out_request_stays_out_downstream(
    tmp_path: Path, traced_model: tuple[Receiver, ServerProcess]
) -> None:
    """The router records nothing under an unsampled parent and passes the decision on, so
    the model server does not start traces of its own; a sampled request next to it is whole.
    Callers' binary metadata travels beside the trace context without harm."""
    collector, model = traced_model
    rport = free_port()
    config = {
        "models": {"wav2vec2": {"endpoints": [model.address]}},
        "routes": {"embed": {"primary": "wav2vec2"}},
    }
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
    router = ServerProcess(
        router_args(tmp_path / "router.yaml", rport), tmp_path / "r.log", rport
    ).start()
    sampled, unsampled = secrets.token_hex(16), secrets.token_hex(16)
    try:
        await asyncio.to_thread(model.wait_status)
        await asyncio.to_thread(router.wait_status)
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = rpb_grpc.AudioRouterStub(channel)
            for trace_id, flags in ((unsampled, "00"), (sampled, "01"), (unsampled, "00")):
                await stub.Process(
                    rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_EMBED),
                    metadata=(
                        ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"),
                        # Binary metadata beside it is not text: extracting must not decode it.
                        ("x-caller-bin", b"\xff\xfe\x00"),
                    ),
                    timeout=10,
                )
    finally:
        await asyncio.to_thread(router.stop)
        await asyncio.to_thread(model.stop)
    assert router.wait() == 0 and model.wait() == 0

    # The router's own background calls (ModelMetadata) are traces of their own.
    inference = [s for s in collector.spans if "ModelMetadata" not in s["name"]]
    assert {s["trace"] for s in inference} == {sampled}, sorted(
        (s["trace"][:6], s["service"], s["name"]) for s in inference
    )
    names = {(s["service"], s["name"]) for s in collector.spans}
    assert ("router", "attempt") in names and ("modelserver", "batch_inference") in names


async def test_a_streamed_answer_is_one_trace_with_a_generation_span(
    tiny_models: Path, tmp_path: Path, traced_model: tuple[Receiver, ServerProcess]
) -> None:
    collector, _ = traced_model
    port, rport = free_port(), free_port()
    gama = ServerProcess(
        modelserver_args(tiny_models / "gama", port), tmp_path / "g.log", port
    ).start()
    config = {
        "models": {"gama": {"endpoints": [gama.address]}},
        "routes": {"describe": {"primary": "gama", "quality": {"slo_ms": 10_000}}},
    }
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
    router = ServerProcess(
        router_args(tmp_path / "router.yaml", rport), tmp_path / "r.log", rport
    ).start()
    trace_id = secrets.token_hex(16)
    try:
        await asyncio.to_thread(gama.wait_status)
        await asyncio.to_thread(router.wait_status)
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = rpb_grpc.AudioRouterStub(channel)
            messages = [
                m
                async for m in stub.ProcessStream(
                    rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_DESCRIBE, prompt="Hi"),
                    metadata=(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),),
                    timeout=20,
                )
            ]
    finally:
        await asyncio.to_thread(router.stop)
        await asyncio.to_thread(gama.stop)
    assert router.wait() == 0 and gama.wait() == 0
    usage = messages[-1].result.usage

    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in collector.spans:
        if s["trace"] == trace_id:
            by_name.setdefault(s["name"], []).append(s)
    (process,) = by_name["gamaserving.router.v1.AudioRouter/ProcessStream"]
    (attempt,) = by_name["attempt"]
    assert attempt["parent"] == process["id"]
    assert attempt["attributes"]["rpc.method"] == "inference.GRPCInferenceService/ModelStreamInfer"
    (stream,) = by_name["inference.GRPCInferenceService/ModelStreamInfer"]
    assert stream["service"] == "modelserver" and stream["parent"] == attempt["id"]
    (generation,) = by_name["generation"]
    assert generation["parent"] == stream["id"]
    a = generation["attributes"]
    assert a["gen_ai.usage.input_tokens"] == usage.input_tokens > 96
    assert a["gen_ai.usage.output_tokens"] == usage.output_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == [usage.finish_reason]
    assert a["gen_ai.request.model"] == "gama"


async def test_a_failed_requests_log_line_carries_its_trace(
    tmp_path: Path, receiver: tuple[Receiver, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a failed request in Jaeger to its log line: the router's JSON line names the trace
    and the span it was written in."""
    collector, otlp_port = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    trace_id = secrets.token_hex(16)
    async with fault_server("broken", mode="unavailable") as (_, address):
        rport = free_port()
        config = {
            "models": {"broken": {"endpoints": [address]}},
            "routes": {"embed": {"primary": "broken"}},
        }
        (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))
        router = ServerProcess(
            router_args(tmp_path / "router.yaml", rport), tmp_path / "r.log", rport
        ).start()
        try:
            await asyncio.to_thread(router.wait_status)
            async with grpc.aio.insecure_channel(router.address) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await rpb_grpc.AudioRouterStub(channel).Process(
                        rpb.ProcessRequest(audio=wav(0.2), task=rpb.TASK_EMBED, request_id="r1"),
                        metadata=(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),),
                        timeout=10,
                    )
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await asyncio.to_thread(router.stop)
        assert router.wait() == 0
    lines = [json.loads(line) for line in (tmp_path / "r.log").read_text().splitlines()
             if line.startswith("{")]  # fmt: skip
    (failed,) = [x for x in lines if x.get("event") == "request_failed"]
    assert failed["request_id"] == "r1" and failed["status"] == "UNAVAILABLE"
    (process,) = [s for s in collector.spans if s["name"].endswith("AudioRouter/Process")]
    assert failed["trace_id"] == trace_id == process["trace"]
    assert failed["span_id"] == process["id"]
    # Lines outside any request carry no ids.
    assert any("trace_id" not in x for x in lines)
