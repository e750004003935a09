"""Dynamic batching: group concurrent requests into one model call.

One worker task owns the queue. It waits at most `max_queue_delay` after the oldest request for
others already on their way to join, then runs the batch on the single inference thread while
new requests queue up, so under load batches form by themselves and at low load nothing
waits. Requests whose deadline passed, or whose caller went away, are dropped from the queue
and never computed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from modelserver.config import Batching
from modelserver.errors import InferenceError, exhausted, unavailable
from modelserver.worker import UNOBSERVED, CallObserver, WorkLoop

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchInfo:
    queue_ms: float
    compute_ms: float
    batch_size: int
    started: float = 0.0
    """When the model call began, on the batcher's clock."""
    tags: tuple[Any, ...] = ()
    """The `tag` of every request in the batch (trace contexts, for span links)."""


@dataclass
class BatcherStats:
    submitted: int = 0
    computed: int = 0
    batches: int = 0
    rejected: int = 0
    expired: int = 0
    cancelled: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def record_batch(self, size: int) -> None:
        self.batches += 1
        self.computed += size
        # Bounded: the last few thousand sizes are enough for tests and debugging.
        self.batch_sizes.append(size)
        if len(self.batch_sizes) > 4096:
            del self.batch_sizes[:1024]


@dataclass
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[tuple[R, BatchInfo]]
    enqueued: float
    deadline: float | None
    tag: Any = None


class DynamicBatcher(WorkLoop, Generic[T, R]):
    name = "batcher"

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        settings: Batching,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver = UNOBSERVED,
        arriving: Callable[[], int] = lambda: 0,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
    ) -> None:
        super().__init__(executor, clock, observer)
        self._run_batch = run_batch
        self.settings = settings
        self._arriving = arriving
        self._on_batch = on_batch
        self._queue: deque[_Entry[T, R]] = deque()
        self._wakeup = asyncio.Event()
        self.stats = BatcherStats()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def _fail_pending(self, error: InferenceError) -> None:
        for entry in self._queue:
            if not entry.future.done():
                entry.future.set_exception(error)
        self._queue.clear()

    async def submit(
        self, item: T, deadline: float | None = None, tag: Any = None
    ) -> tuple[R, BatchInfo]:
        """Queue one item; `deadline` is on this batcher's clock; `tag` comes back in BatchInfo."""
        if self._closed:
            raise unavailable("the model server is draining and takes no new requests")
        if len(self._queue) >= self.settings.max_queue_size:
            self.stats.rejected += 1
            raise exhausted(
                f"the inference queue is full ({self.settings.max_queue_size} requests waiting); "
                "retry with backoff or send to another replica"
            )
        future: asyncio.Future[tuple[R, BatchInfo]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(item, future, self._clock(), deadline, tag))
        self.stats.submitted += 1
        self._wakeup.set()
        return await future

    async def _gather_window(self) -> None:
        first = self._queue[0]
        limit = self.settings.max_batch_size
        delay = self.settings.max_queue_delay_ms / 1000
        # Wait only for requests known to be on their way (being decoded): a lone request at
        # low load goes straight to the model, so batching costs nothing there.
        while len(self._queue) < limit and self._arriving() > 0:
            remaining = first.enqueued + delay - self._clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Entry[T, R]]:
        batch: list[_Entry[T, R]] = []
        now = self._clock()
        while self._queue and len(batch) < self.settings.max_batch_size:
            entry = self._queue.popleft()
            if entry.future.done():
                self.stats.cancelled += 1
                continue
            if entry.deadline is not None and now >= entry.deadline:
                self.stats.expired += 1
                entry.future.set_exception(
                    InferenceError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        "deadline passed while queued; not computed",
                    )
                )
                continue
            batch.append(entry)
        return batch

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.settings.max_batch_size > 1:
                await self._gather_window()
            batch = self._take()
            if not batch:
                continue
            start = self._clock()
            try:
                results = await self._call_model(
                    "on this batch", len(batch), self._run_batch, [e.item for e in batch]
                )
            except InferenceError as error:
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(error)
                continue
            compute_ms = (self._clock() - start) * 1000
            self.stats.record_batch(len(batch))
            self._on_batch(len(batch), compute_ms / 1000)
            tags = tuple(e.tag for e in batch)
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():
                    info = BatchInfo(
                        (start - entry.enqueued) * 1000, compute_ms, len(batch), start, tags
                    )
                    entry.future.set_result((result, info))
