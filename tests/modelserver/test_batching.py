"""The dynamic batcher on its own, with a recording model function as its collaborator."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from modelserver.batching import DynamicBatcher
from modelserver.config import Batching
from modelserver.errors import InferenceError
from tests.support.fakes import Calls


class Recorder:
    """Doubles each item and remembers every batch; can be held to keep the worker busy."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = fail

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(items))
        if self.fail:
            raise RuntimeError("model exploded")
        return [2 * i for i in items]

    @property
    def computed(self) -> list[int]:
        return [i for batch in self.batches for i in batch]


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    pool = ThreadPoolExecutor(1)
    yield pool  # type: ignore[misc]
    pool.shutdown(wait=False)


async def _hold_worker(
    batcher: DynamicBatcher[int, int], model: Recorder
) -> asyncio.Task[tuple[int, object]]:
    """Occupy the worker with item -1 until `model.gate` is set."""
    model.gate.clear()
    model.entered.clear()
    busy = asyncio.create_task(batcher.submit(-1))
    assert await asyncio.to_thread(model.entered.wait, 5)
    return busy  # type: ignore[return-value]


async def test_queued_requests_form_batches_up_to_the_limit(executor: ThreadPoolExecutor) -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, Batching(max_batch_size=4, max_queue_delay_ms=0), executor)
    batcher.start()
    busy = await _hold_worker(batcher, model)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(10)]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(busy, *tasks)
    assert [r for r, _ in results[1:]] == [2 * i for i in range(10)]
    assert [len(b) for b in model.batches] == [1, 4, 4, 2]
    assert [info.batch_size for _, info in results[1:]] == [4] * 8 + [2] * 2
    await batcher.stop()


async def test_lone_request_does_not_wait_for_the_window(executor: ThreadPoolExecutor) -> None:
    """Nothing else is on its way, so a 10-second window is not waited out."""
    model = Recorder()
    batcher = DynamicBatcher(model, Batching(max_batch_size=8, max_queue_delay_ms=10_000), executor)
    batcher.start()
    result, info = await asyncio.wait_for(batcher.submit(7), timeout=2)
    assert (result, info.batch_size) == (14, 1)
    await batcher.stop()


async def test_window_waits_for_requests_on_their_way(executor: ThreadPoolExecutor) -> None:
    model = Recorder()
    arriving = [1]
    batcher = DynamicBatcher(
        model,
        Batching(max_batch_size=2, max_queue_delay_ms=5_000),
        executor,
        arriving=lambda: arriving[0],
    )
    batcher.start()
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.05)
    assert model.batches == []  # still waiting for the announced request
    arriving[0] = 0
    second = asyncio.create_task(batcher.submit(2))
    (_, a), (_, b) = await asyncio.wait_for(asyncio.gather(first, second), timeout=2)
    assert model.batches == [[1, 2]] and a.batch_size == b.batch_size == 2
    await batcher.stop()


async def test_full_queue_is_resource_exhausted(executor: ThreadPoolExecutor) -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, Batching(max_batch_size=1, max_queue_size=3), executor)
    batcher.start()
    busy = await _hold_worker(batcher, model)
    waiting = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    with pytest.raises(InferenceError) as info:
        await batcher.submit(99)
    assert info.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full (3 requests waiting)" in info.value.message
    model.gate.set()
    await asyncio.gather(busy, *waiting)
    assert 99 not in model.computed and batcher.stats.rejected == 1
    await batcher.stop()


async def test_expired_and_cancelled_requests_are_never_computed(
    executor: ThreadPoolExecutor,
) -> None:
    now = [100.0]
    model = Recorder()
    batcher = DynamicBatcher(model, Batching(max_batch_size=8), executor, clock=lambda: now[0])
    batcher.start()
    busy = await _hold_worker(batcher, model)
    expired = asyncio.create_task(batcher.submit(1, deadline=100.5))
    alive = asyncio.create_task(batcher.submit(2, deadline=200.0))
    gone = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0.01)
    gone.cancel()
    now[0] = 101.0  # the first deadline passes while the worker is busy
    model.gate.set()
    await busy
    assert (await alive)[0] == 4
    with pytest.raises(InferenceError) as info:
        await expired
    assert info.value.status is grpc.StatusCode.DEADLINE_EXCEEDED
    assert model.computed == [-1, 2]
    assert (batcher.stats.expired, batcher.stats.cancelled) == (1, 1)
    await batcher.stop()


async def test_model_fault_fails_the_batch_not_the_batcher(executor: ThreadPoolExecutor) -> None:
    calls = Calls()
    model = Recorder(fail=True)
    batcher = DynamicBatcher(model, Batching(max_batch_size=4), executor, observer=calls)
    batcher.start()
    with pytest.raises(InferenceError) as info:
        await batcher.submit(1)
    assert info.value.status is grpc.StatusCode.INTERNAL and "RuntimeError" in info.value.message
    model.fail = False
    assert (await batcher.submit(5))[0] == 10
    assert len(calls.failed) == 1 and calls.succeeded == 1 and batcher.faults == 1
    await batcher.stop()


async def test_closed_batcher_refuses_new_work_but_finishes_queued(
    executor: ThreadPoolExecutor,
) -> None:
    model = Recorder()
    batcher = DynamicBatcher(model, Batching(max_batch_size=1), executor)
    batcher.start()
    busy = await _hold_worker(batcher, model)
    queued = asyncio.create_task(batcher.submit(4))
    await asyncio.sleep(0.01)
    batcher.close()
    with pytest.raises(InferenceError) as info:
        await batcher.submit(5)
    assert info.value.status is grpc.StatusCode.UNAVAILABLE
    model.gate.set()
    await busy
    assert (await queued)[0] == 8
    await batcher.stop()


def test_busy_since_marks_a_running_call() -> None:
    async def scenario() -> None:
        pool = ThreadPoolExecutor(1)
        model = Recorder()
        batcher = DynamicBatcher(model, Batching(), pool)
        batcher.start()
        assert batcher.busy_since is None
        busy = await _hold_worker(batcher, model)
        assert batcher.busy_since is not None and batcher.busy_since <= time.monotonic()
        model.gate.set()
        await busy
        assert batcher.busy_since is None
        await batcher.stop()
        pool.shutdown()

    asyncio.run(scenario())
