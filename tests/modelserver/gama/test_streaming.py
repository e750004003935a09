"""Continuous batching and ModelStreamInfer on the tiny GAMA, over real channels."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gamaserving.inference import grpc_predict_v2_pb2 as pb
from gamaserving.oip import join_bytes
from modelserver.config import GamaGeneration
from modelserver.generation.scheduler import GenerationScheduler
from tests.modelserver.conftest import Live, LiveFactory
from tests.support.audio import wav
from tests.support.oip import infer_request, outputs, params
from tests.support.waiting import until

PROBE = Path(__file__).parents[1] / "tritonclient_stream_probe.py"
LONG, SHORT = 128, 8
# Room for 128-token answers (the tiny model's own bound is 32).
LONG_ANSWERS = {"gama": {"generation": GamaGeneration(max_new_tokens=200)}}


def describe(request_id: str, tokens: int, clip: float = 1.0, **extra: Any) -> pb.ModelInferRequest:
    return infer_request(
        "gama",
        audio=wav(clip),
        task="describe",
        prompt="What do you hear?",
        request_id=request_id,
        max_new_tokens=tokens,
        **extra,
    )


def scheduler(live: Live) -> GenerationScheduler:
    assert live.core.scheduler is not None
    return live.core.scheduler


async def requests(*items: pb.ModelInferRequest) -> AsyncIterator[pb.ModelInferRequest]:
    for item in items:
        yield item


def text_of(response: pb.ModelInferResponse) -> str:
    return str(outputs(response)["TEXT"][0])


async def test_tritonclient_streams_the_unary_answer(
    tiny_models: Path, serve: LiveFactory, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav(1.0))
    async with serve(tiny_models / "gama") as live:
        args = [sys.executable, str(PROBE), "--url", f"127.0.0.1:{live.server.port}"]
        args += ["--model", "gama", "--wav", str(clip), "--prompt", "What do you hear?"]
        runs = {}
        for request_id, tokens, temperature in (("greedy", 24, 0.0), ("sampled", 6, 0.7)):
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    *args,
                    *("--request-id", request_id, "--max-new-tokens", str(tokens)),
                    *("--temperature", str(temperature)),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            runs[request_id] = json.loads(done.stdout)
    for request_id, run in runs.items():
        assert len(run["pieces"]) > 1, run
        assert "".join(run["pieces"]) == run["unary"] != ""
        assert run["ids"] == [request_id]
        final = run["final"]
        assert final["outputs"] == []
        p = final["parameters"]
        assert p["triton_final_response"] is True
        assert p["finish_reason"] in ("stop", "length")
        assert p["output_tokens"] == run["unary_parameters"]["output_tokens"] >= 1
        assert p["input_tokens"] == run["unary_parameters"]["input_tokens"] > 96
        # Pieces end on whole words: none starts or ends inside a word of the answer.
        words = run["unary"].split()
        assert all(w in words for piece in run["pieces"] for w in piece.split())
    assert runs["greedy"]["final"]["parameters"]["output_tokens"] <= 24


async def test_a_short_answer_sent_after_a_long_one_finishes_first(
    tiny_models: Path, serve: LiveFactory
) -> None:
    async with serve(tiny_models / "gama", **LONG_ANSWERS) as live:
        steps = scheduler(live).stats.steps
        order: list[str] = []
        started = asyncio.Event()

        async def long() -> None:
            async for reply in live.stub.ModelStreamInfer(requests(describe("long", LONG))):
                assert not reply.error_message, reply.error_message
                started.set()
                if params(reply.infer_response).get("triton_final_response"):
                    order.append("long")
                    assert params(reply.infer_response)["output_tokens"] == LONG

        async def short() -> None:
            await started.wait()
            response = await live.stub.ModelInfer(describe("short", SHORT))
            assert params(response)["output_tokens"] == SHORT
            order.append("short")

        await asyncio.gather(long(), short())
        assert order == ["short", "long"]
        # They shared decode steps: the short one joined the running batch.
        assert scheduler(live).stats.steps - steps < LONG + SHORT


async def test_sixteen_mixed_answers_equal_their_answers_alone(
    tiny_models: Path, serve: LiveFactory
) -> None:
    mix = [
        describe(
            f"mix-{i}",
            LONG if i % 4 == 0 else SHORT + i,
            clip=0.5 + 0.1 * i,
            temperature=0.0 if i % 2 else 0.8,
        )
        for i in range(16)
    ]
    async with serve(tiny_models / "gama", **LONG_ANSWERS) as live:
        alone = [text_of(await live.stub.ModelInfer(r)) for r in mix]
        assert scheduler(live).stats.steps > 0
        together = await asyncio.gather(*(live.stub.ModelInfer(r) for r in mix))
        assert [text_of(r) for r in together] == alone
        assert max(int(params(r)["batch_size"]) for r in together) > 4
    assert len(set(alone)) > 8


async def test_a_cancelled_stream_leaves_the_batch_within_a_step(
    tiny_models: Path, serve: LiveFactory
) -> None:
    async with serve(tiny_models / "gama", **LONG_ANSWERS) as live:
        s = scheduler(live)
        before = s.stats.decoded_tokens
        call = live.stub.ModelStreamInfer(requests(describe("gone", LONG)))
        first = await call.read()
        assert text_of(first.infer_response)
        call.cancel()
        await until(lambda: s.occupancy == 0 and live.core.in_flight == 0, "the slot freed")
        spent = s.stats.decoded_tokens - before
        assert s.stats.cancelled == 1
        assert s.stats.decoded_after_cancel <= 1
        assert spent < LONG
        # The server goes on serving.
        response = await live.stub.ModelInfer(describe("after", SHORT))
        assert params(response)["output_tokens"] == SHORT


async def test_a_stream_deadline_ends_the_answer_and_frees_the_slot(
    tiny_models: Path, serve: LiveFactory
) -> None:
    async with serve(tiny_models / "gama", **LONG_ANSWERS) as live:
        s = scheduler(live)
        # Decoding is held after its first step until the caller's deadline has passed.
        gate = threading.Event()
        step = s.engine.step

        def held() -> list[int]:
            gate.wait(20)
            return step()

        s.engine.step = held  # type: ignore[method-assign]
        before = s.stats.decoded_tokens
        call = live.stub.ModelStreamInfer(requests(describe("late", LONG)), timeout=0.3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.set()
        await until(lambda: s.occupancy == 0 and live.core.in_flight == 0, "the slot freed")
        # The first token, and at most the step that was held.
        assert s.stats.decoded_tokens - before <= 2
        assert s.stats.cancelled + s.stats.expired == 1


async def test_a_bad_request_on_a_stream_gets_an_error_and_the_stream_goes_on(
    gama: Live,
) -> None:
    bad = infer_request("gama", audio=wav(1.0), task="describe", request_id="bad")
    unknown = infer_request("gama", audio=b"not audio", task="embed", request_id="noise")
    good = describe("good", 6)
    replies = [r async for r in gama.stub.ModelStreamInfer(requests(bad, unknown, good))]
    errors = {r.infer_response.id: r for r in replies if r.error_message}
    assert set(errors) == {"bad", "noise"}
    assert "PROMPT" in errors["bad"].error_message
    assert params(errors["bad"].infer_response)["error_code"] == "INVALID_ARGUMENT"
    assert params(errors["noise"].infer_response)["error_code"] == "INVALID_ARGUMENT"
    finals = [r for r in replies if params(r.infer_response).get("triton_final_response")]
    assert [r.infer_response.id for r in finals] == ["good"]


async def test_a_one_shot_task_on_a_stream_is_one_final_response(gama: Live) -> None:
    embed = infer_request("gama", audio=wav(1.0), task="embed", request_id="e")
    replies = [r async for r in gama.stub.ModelStreamInfer(requests(embed))]
    assert len(replies) == 1
    assert params(replies[0].infer_response)["triton_final_response"] is True
    assert outputs(replies[0].infer_response)["EMBEDDING"].shape == (1, 128)


async def test_beyond_the_kv_budget_and_the_queue_callers_get_resource_exhausted(
    tiny_models: Path, serve: LiveFactory
) -> None:
    # One 128-token answer (about 236 slots) fits the budget; a second waits; a third is
    # refused; an answer that could never fit is refused at once.
    budget = {"kv_budget_tokens": 240, "max_waiting": 1}
    bound = {"gama": {"generation": GamaGeneration(max_new_tokens=LONG)}}
    async with serve(tiny_models / "gama", continuous_batching=budget, **bound) as live:
        s = scheduler(live)
        first = live.stub.ModelStreamInfer(requests(describe("a", LONG)))
        await first.read()
        second = asyncio.ensure_future(live.stub.ModelInfer(describe("b", LONG)))
        await until(lambda: s.depth == 1, "the second answer waiting")
        assert s.occupancy == 1
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await live.stub.ModelInfer(describe("c", SHORT))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in (full.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as huge:
            wordy = describe("d", LONG)
            wordy.raw_input_contents[1] = join_bytes([("sound " * 40).encode()])
            await live.stub.ModelInfer(wordy)
        assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_new_tokens" in (huge.value.details() or "")
        while await first.read() != grpc.aio.EOF:
            pass
        assert params(await second)["output_tokens"] == LONG
        response = await live.stub.ModelInfer(describe("e", SHORT))
        assert params(response)["output_tokens"] == SHORT
        assert s.stats.rejected == 2


async def test_a_kv_budget_the_device_cannot_hold_refuses_to_start(
    tiny_models: Path, serve: LiveFactory
) -> None:
    with pytest.raises(ValueError, match=r"continuous_batching\.kv_budget_tokens"):
        async with serve(tiny_models / "gama", continuous_batching={"kv_budget_tokens": 10**13}):
            pass


async def test_static_batching_still_serves_describe(tiny_models: Path, serve: LiveFactory) -> None:
    async with serve(tiny_models / "gama", continuous_batching={"enabled": False}) as live:
        assert live.core.scheduler is None
        replies = [r async for r in live.stub.ModelStreamInfer(requests(describe("s", 6)))]
        assert len(replies) == 1
        final = replies[0].infer_response
        assert params(final)["triton_final_response"] is True
        assert text_of(final)
