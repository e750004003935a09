"""Ten times capacity through a live router and model server: the excess is shed with
RESOURCE_EXHAUSTED, what is accepted keeps a bounded latency, and memory stays bounded. The
bounds are loose on purpose (a loaded CI machine); the measured numbers are in
docs/benchmarks.md (`make bench`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from benchmarks.overload import MAX_IN_FLIGHT, QUEUE_BOUND, fire, stack
from gamaserving.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.audio import wav
from tests.support.oip import infer_request


def test_router_sheds_beyond_its_limit_with_bounded_latency_and_memory(
    tiny_models: Path, tmp_path: Path
) -> None:
    with stack(tiny_models, tmp_path) as (model, router):
        assert model.proc is not None and router.proc is not None
        pids = {"router": router.proc.pid, "model": model.proc.pid}
        capacity = asyncio.run(fire(router.address, MAX_IN_FLIGHT, 3.0, pids))
        overload = asyncio.run(fire(router.address, 10 * MAX_IN_FLIGHT, 4.0, pids))
    assert set(capacity.codes) == {"OK"}, capacity.codes
    assert set(overload.codes) == {"OK", "RESOURCE_EXHAUSTED"}, overload.codes
    # A good share of 10x is turned away (shed callers back off 20 ms, so not 90%) ...
    assert overload.shed > 0.2 * (overload.shed + overload.accepted)
    assert overload.accepted > 0.3 * capacity.accepted * 4 / 3  # ... while work still flows
    # Admission bounds the work in the system, so an accepted request waits for at most
    # max_in_flight others: its latency stays near what it is at capacity.
    assert overload.percentile(99) < 4 * capacity.percentile(99) + 250
    for name in ("router", "model"):
        growth = overload.rss_peak[name] - capacity.rss_start[name]
        assert growth < 150 * 2**20, f"{name} grew by {growth / 2**20:.0f} MiB"


def test_model_server_sheds_beyond_its_queue_bound(tiny_models: Path, tmp_path: Path) -> None:
    with stack(tiny_models, tmp_path) as (model, _router):

        async def storm() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(model.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                # Long clips make the model the bottleneck, so the batcher's queue fills.
                request = infer_request("wav2vec2", audio=wav(8.0), task="embed")

                async def one() -> grpc.StatusCode:
                    try:
                        await stub.ModelInfer(request, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()
                    return grpc.StatusCode.OK

                return await asyncio.gather(*(one() for _ in range(10 * QUEUE_BOUND)))

        codes = asyncio.run(storm())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) > 0
    assert codes.count(grpc.StatusCode.OK) >= QUEUE_BOUND


pytestmark = pytest.mark.timeout(180)
