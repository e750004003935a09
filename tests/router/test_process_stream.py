"""AudioRouter/ProcessStream: the answer streamed through the router from real model servers,
failover only before the first piece, cancellation reaching the decode batch."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from gamaserving.router.v1 import router_pb2 as rpb
from modelserver.config import GamaGeneration
from tests.modelserver.conftest import live_server
from tests.router.conftest import LiveRouter, base_config, live_router
from tests.support.audio import wav
from tests.support.fault_server import fault_server
from tests.support.processes import ServerProcess, modelserver
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "tests" / "clients" / "node"
PROMPT = "What do you hear?"
ARGS = (PROMPT, "node-1")


def describe_route(primary: list[str], fallback: list[str] | None = None) -> dict[str, Any]:
    endpoints = {"primary": primary, **({"fallback": fallback} if fallback else {})}
    cfg = base_config(
        endpoints,
        describe={
            "primary": "primary",
            "fallbacks": ["fallback"] if fallback else [],
            "quality": {"slo_ms": 10_000},
        },
        embed={"primary": "primary"},
    )
    for name in endpoints:
        cfg["models"][name]["model_name"] = "gama"
    return cfg


async def stream(
    router: LiveRouter, request_id: str, deadline_s: float = 20
) -> tuple[list[str], rpb.ProcessResponse]:
    pieces: list[str] = []
    result = None
    call = router.stub.ProcessStream(
        rpb.ProcessRequest(
            audio=wav(1.0), task=rpb.TASK_DESCRIBE, prompt=PROMPT, request_id=request_id
        ),
        timeout=deadline_s,
    )
    async for message in call:
        assert message.request_id == request_id
        assert result is None, "nothing follows the last message"
        if message.HasField("result"):
            result = message.result
        else:
            pieces.append(message.text)
    assert result is not None
    return pieces, result


async def test_process_stream_streams_the_answer_process_returns(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    async with live_router(describe_route([model_servers["gama"].address]), tmp_path) as router:
        pieces, result = await stream(router, "stream-1")
        unary = await router.process(
            rpb.TASK_DESCRIBE, wav(1.0), prompt=PROMPT, request_id="stream-1"
        )
        embed = [
            m
            async for m in router.stub.ProcessStream(
                rpb.ProcessRequest(audio=wav(1.0), task=rpb.TASK_EMBED), timeout=10
            )
        ]
    assert len(pieces) > 1
    assert "".join(pieces) == result.text == unary.text != ""
    assert result.route.model == "primary" and not result.route.fallback_used
    assert result.quality.passed and unary.quality.passed
    assert result.usage.finish_reason in ("stop", "length")
    assert result.usage.output_tokens == unary.usage.output_tokens > 0
    assert result.usage.input_tokens > 96 and result.usage.time_to_first_token_ms > 0
    assert result.route.attempts[0].outcome == "ok"
    # Other tasks: one message, the whole response.
    assert len(embed) == 1 and embed[0].HasField("result")
    assert len(embed[0].result.features) == 128


async def test_a_node_client_reads_the_stream_from_the_proto_alone(
    model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node (Node.js) for the other-language client")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("needs npm to install the Node.js client's packages (make node-client)")
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav(1.0))
    async with live_router(describe_route([model_servers["gama"].address]), tmp_path) as router:
        port = router.server.port
        done = await asyncio.to_thread(
            subprocess.run,
            [node, str(NODE_CLIENT / "process_stream.js"), f"127.0.0.1:{port}", str(clip), *ARGS],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        _, ours = await stream(router, "node-1")
    read = json.loads(done.stdout)
    assert len(read["pieces"]) > 1
    assert "".join(read["pieces"]) == read["text"] == ours.text
    assert read["model"] == "primary" and read["quality_passed"] is True
    assert read["finish_reason"] in ("stop", "length") and read["output_tokens"] > 0


async def test_after_the_first_piece_a_failure_ends_the_stream_without_failover(
    tmp_path: Path,
) -> None:
    async with (
        fault_server("gama", mode="break") as (_, p_addr),
        fault_server("gama") as (fallback, f_addr),
        live_router(describe_route([p_addr], [f_addr]), tmp_path) as router,
    ):
        await router.all_serving()
        received: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for message in router.stub.ProcessStream(
                rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_DESCRIBE, prompt=PROMPT),
                timeout=10,
            ):
                received.append(message.text)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not retried" in (err.value.details() or "")
        assert received == ["gama"]  # the first piece, once
        assert fallback.received == 0
        # Process has sent nothing when the primary breaks: it fails over.
        unary = await router.process(rpb.TASK_DESCRIBE, wav(0.5), prompt=PROMPT)
        assert unary.text == "gama says hello" and unary.route.model == "fallback"
        assert unary.route.fallback_reason == "unavailable"


async def test_before_the_first_piece_failures_and_empty_answers_fail_over(
    tmp_path: Path,
) -> None:
    for mode, reason in (("unavailable", "unavailable"), ("empty_text", "quality:")):
        async with (
            fault_server("gama", mode=mode) as (_, p_addr),
            fault_server("gama") as (_, f_addr),
            live_router(describe_route([p_addr], [f_addr]), tmp_path) as router,
        ):
            await router.all_serving()  # the primary is tried, and fails as `mode` says
            pieces, result = await stream(router, f"before-{mode}")
        assert "".join(pieces) == result.text == "gama says hello"
        assert result.route.model == "fallback" and result.route.fallback_used
        assert result.route.fallback_reason.startswith(reason)
        assert result.quality.passed


async def test_sigkill_of_the_primary_before_the_first_token_falls_back(
    tiny_models: Path, model_servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    with modelserver(tiny_models / "gama", tmp_path) as primary:
        cfg = describe_route([primary.address], [model_servers["gama"].address])
        async with live_router(cfg, tmp_path) as router:
            assert primary.proc is not None
            # Frozen, the primary takes the request and cannot answer; then it dies.
            os.kill(primary.proc.pid, signal.SIGSTOP)
            (endpoint,) = router.core.state.backends["primary"].endpoints  # type: ignore[union-attr]
            answer = asyncio.ensure_future(stream(router, "killed-1"))
            await until(lambda: endpoint.in_flight == 1, "the attempt reaching the primary")
            primary.proc.kill()
            pieces, result = await answer
            alone = await router.process(
                rpb.TASK_DESCRIBE, wav(1.0), prompt=PROMPT, request_id="killed-1"
            )
    assert "".join(pieces) == result.text == alone.text != ""
    assert result.route.model == "fallback" and result.route.fallback_used
    assert result.route.attempts[0].model == "primary"
    assert result.route.attempts[0].outcome == "failed"


async def test_cancelling_through_the_router_frees_the_slot_within_a_step(
    tiny_models: Path, tmp_path: Path
) -> None:
    long = {"gama": {"generation": GamaGeneration(max_new_tokens=128)}}
    async with live_server(tiny_models / "gama", **long) as model:
        s = model.core.scheduler
        assert s is not None
        address = f"127.0.0.1:{model.server.port}"
        async with live_router(describe_route([address]), tmp_path) as router:
            before = s.stats.decoded_tokens
            call = router.stub.ProcessStream(
                rpb.ProcessRequest(audio=wav(1.0), task=rpb.TASK_DESCRIBE, prompt=PROMPT),
                timeout=20,
            )
            first = await call.read()
            assert first.text
            call.cancel()
            await until(lambda: s.occupancy == 0 and model.core.in_flight == 0, "the slot freed")
            assert s.stats.cancelled == 1 and s.stats.decoded_after_cancel <= 1
            assert s.stats.decoded_tokens - before < 128


async def test_a_statically_batching_model_server_streams_one_whole_answer(
    tiny_models: Path, tmp_path: Path
) -> None:
    async with live_server(tiny_models / "gama", continuous_batching={"enabled": False}) as model:
        address = f"127.0.0.1:{model.server.port}"
        async with live_router(describe_route([address]), tmp_path) as router:
            pieces, result = await stream(router, "static-1")
            unary = await router.process(
                rpb.TASK_DESCRIBE, wav(1.0), prompt=PROMPT, request_id="static-1"
            )
    assert pieces == []
    assert result.text == unary.text != ""
    assert result.route.model == "primary" and result.quality.passed


async def test_experiments_shadow_and_quality_work_on_the_stream(tmp_path: Path) -> None:
    async with (
        fault_server("gama") as (control, c_addr),
        fault_server("gama") as (candidate, k_addr),
        fault_server("gama") as (shadow, s_addr),
        fault_server("gama") as (fallback, f_addr),
    ):
        cfg = describe_route([c_addr], [f_addr])
        for name, addr in (("candidate", k_addr), ("shadow", s_addr)):
            cfg["models"][name] = {"endpoints": [addr], "model_name": "gama", "timeout_ms": 5000}
        cfg["routes"]["describe"]["experiment"] = {
            "name": "describe-ab",
            "seed": "s1",
            "arms": [
                {"name": "control", "model": "primary", "weight": 0.5},
                {"name": "candidate", "model": "candidate", "weight": 0.5},
            ],
            "allowlist": {"qa": "candidate"},
            "shadow": {"model": "shadow", "percent": 100},
        }
        # The answer ("gama says hello", 15 characters) is too long for this route.
        cfg["routes"]["describe"]["quality"]["text_max_chars"] = 10
        async with live_router(cfg, tmp_path) as router:
            messages = [
                m
                async for m in router.stub.ProcessStream(
                    rpb.ProcessRequest(
                        audio=wav(0.5), task=rpb.TASK_DESCRIBE, prompt=PROMPT, user_id="qa"
                    ),
                    timeout=10,
                )
            ]
            await until(lambda: shadow.received == 1, "the shadow copy")
    *pieces, last = messages
    assert [m.text for m in pieces] == ["gama", " says", " hello"]
    result = last.result
    assert (result.route.experiment, result.route.arm) == ("describe-ab", "candidate")
    assert result.route.model == "candidate" and result.route.shadowed
    # Checked on the whole answer; pieces had gone out, so it is reported, not replaced.
    assert not result.quality.passed
    assert [c.name for c in result.quality.failed_checks] == ["text.length"]
    assert fallback.received == 0 and control.received == 0 and candidate.received == 1


async def test_a_model_server_without_model_stream_infer_answers_whole(tmp_path: Path) -> None:
    async with (
        fault_server("gama", streams=False) as (plain, p_addr),
        live_router(describe_route([p_addr]), tmp_path) as router,
    ):
        pieces, result = await stream(router, "plain-1")
    assert pieces == [] and result.text == "gama says hello"
    assert result.route.model == "primary" and not result.route.fallback_used
    assert plain.received == 1  # ModelInfer, after the stream was refused


async def test_bad_input_on_the_stream_gets_a_precise_status(tmp_path: Path) -> None:
    async with (
        fault_server("gama") as (model, addr),
        live_router(describe_route([addr]), tmp_path) as router,
    ):
        for request, needle in (
            (rpb.ProcessRequest(task=rpb.TASK_DESCRIBE, prompt=PROMPT), "no audio"),
            (rpb.ProcessRequest(audio=wav(0.5), task=rpb.TASK_DESCRIBE), "prompt"),
            (rpb.ProcessRequest(audio=wav(0.5)), "task must be one of"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in router.stub.ProcessStream(request, timeout=5):
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in (err.value.details() or "")
        assert model.received == 0
        pieces, result = await stream(router, "after-bad")
    assert "".join(pieces) == result.text == "gama says hello"
