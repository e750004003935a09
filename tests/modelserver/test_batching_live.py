"""Dynamic batching through a live server: same answers as one at a time, real batches,
a bounded queue, and expired requests that are never computed."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from tests.modelserver.conftest import HeldWorker, Live, LiveFactory
from tests.support.audio import wav
from tests.support.oip import infer_request, outputs, params

LENGTHS = [0.3 + 0.11 * i for i in range(32)]


async def _one_at_a_time(live: Live, requests: list) -> list:  # type: ignore[type-arg]
    return [await live.stub.ModelInfer(r) for r in requests]


async def test_wav2vec2_32_concurrent_clips_match_sequential(
    serve: LiveFactory, tiny_models
) -> None:  # type: ignore[no-untyped-def]
    requests = [
        infer_request("wav2vec2", audio=wav(s, freq=200 + 37 * i), outputs=["TEXT", "EMBEDDING"])
        for i, s in enumerate(LENGTHS)
    ]
    async with serve(
        tiny_models / "wav2vec2", batching={"max_batch_size": 32, "max_queue_delay_ms": 50}
    ) as live:
        alone = await _one_at_a_time(live, requests)
        together = await asyncio.gather(*(live.stub.ModelInfer(r) for r in requests))
    assert max(params(r)["batch_size"] for r in alone) == 1  # type: ignore[type-var]
    assert max(params(r)["batch_size"] for r in together) > 1  # type: ignore[type-var]
    for a, b in zip(alone, together, strict=True):
        oa, ob = outputs(a), outputs(b)
        np.testing.assert_allclose(oa["EMBEDDING"], ob["EMBEDDING"], atol=1e-4, rtol=1e-4)
        assert oa["TEXT"][0] == ob["TEXT"][0]


async def test_wav2vec2_torch_runtime_batches_the_same(serve: LiveFactory, tiny_models) -> None:  # type: ignore[no-untyped-def]
    requests = [
        infer_request("wav2vec2", audio=wav(s, freq=300 + 11 * i), outputs=["EMBEDDING"])
        for i, s in enumerate(LENGTHS[:12])
    ]
    async with serve(
        tiny_models / "wav2vec2-torch", batching={"max_batch_size": 16, "max_queue_delay_ms": 50}
    ) as live:
        alone = await _one_at_a_time(live, requests)
        together = await asyncio.gather(*(live.stub.ModelInfer(r) for r in requests))
    assert max(params(r)["batch_size"] for r in together) > 1  # type: ignore[type-var]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(
            outputs(a)["EMBEDDING"], outputs(b)["EMBEDDING"], atol=1e-4, rtol=1e-4
        )


async def test_gama_concurrent_requests_match_sequential(serve: LiveFactory, tiny_models) -> None:  # type: ignore[no-untyped-def]
    prompts = [
        "What do you hear?",
        "Describe the sound in one sentence.",
        "Is there speech?",
        "What is it?",
    ]
    # Answers (sampled, seeded per request), tags (greedy answers) and embeddings, mixed.
    requests = [
        infer_request(
            "gama",
            audio=wav(0.5 + 0.4 * i, freq=300 + 50 * i),
            task="describe",
            prompt=prompts[i % 4],
            outputs=["TEXT", "EMBEDDING"],
            max_new_tokens=8,
            request_id=f"r{i}",
        )
        for i in range(6)
    ] + [infer_request("gama", audio=wav(0.7 + 0.3 * i), task="tag") for i in range(2)]
    async with serve(
        tiny_models / "gama", batching={"max_batch_size": 8, "max_queue_delay_ms": 100}
    ) as live:
        alone = await _one_at_a_time(live, requests)
        together = await asyncio.gather(*(live.stub.ModelInfer(r) for r in requests))
    assert max(params(r)["batch_size"] for r in together) > 1  # type: ignore[type-var]
    for a, b in zip(alone, together, strict=True):
        oa, ob = outputs(a), outputs(b)
        assert oa.keys() == ob.keys()
        if "EMBEDDING" in oa:
            np.testing.assert_allclose(oa["EMBEDDING"], ob["EMBEDDING"], atol=1e-4)
            assert oa["TEXT"][0] == ob["TEXT"][0]
        else:
            np.testing.assert_array_equal(oa["SCORES"], ob["SCORES"])
            assert list(oa["LABELS"]) == list(ob["LABELS"])


async def test_full_queue_returns_resource_exhausted(serve: LiveFactory, tiny_models) -> None:  # type: ignore[no-untyped-def]
    request = infer_request("wav2vec2", audio=wav(0.5))
    settings = {"max_batch_size": 1, "max_queue_size": 2}
    async with serve(tiny_models / "wav2vec2", batching=settings) as live:
        worker = HeldWorker(live)
        batcher = worker.batcher
        blocker = asyncio.ensure_future(live.stub.ModelInfer(request))
        await worker.entered()
        waiting = [asyncio.ensure_future(live.stub.ModelInfer(request)) for _ in range(2)]
        for _ in range(500):  # the two prepared requests reach the queue
            if batcher.depth == 2:
                break
            await asyncio.sleep(0.01)
        assert batcher.depth == 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await live.stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full (2 requests waiting)" in (info.value.details() or "")
        worker.release()
        for call in [blocker, *waiting]:
            assert "TEXT" in outputs(await call)
        assert "TEXT" in outputs(await live.stub.ModelInfer(request))


async def test_expired_requests_are_not_computed(serve: LiveFactory, tiny_models) -> None:  # type: ignore[no-untyped-def]
    quick = infer_request("wav2vec2", audio=wav(0.5), task="embed")
    async with serve(tiny_models / "wav2vec2", batching={"max_batch_size": 1}) as live:
        worker = HeldWorker(live)
        batcher = worker.batcher
        before = batcher.stats.computed
        blocker = asyncio.ensure_future(live.stub.ModelInfer(quick))
        await worker.entered()
        doomed = [live.stub.ModelInfer(quick, timeout=0.2) for _ in range(5)]
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for r in results
        )
        worker.release()
        await blocker
        await live.stub.ModelInfer(quick)
        assert batcher.stats.computed - before == 2  # the blocker and the last one, nothing else
        assert batcher.stats.expired + batcher.stats.cancelled == 5
