"""Events off the request path: kept in a bounded buffer on the event loop, written in batches
every `flush_ms` by a worker thread (one transaction per batch), all of them at drain. While the
store is down they wait and go in the first flush after it is back; beyond `max_buffer` new
events are dropped and counted, so serving never waits on the database and memory stays
bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from router.results.store import Exposure, Outcome, ResultsStore, StoreError

log = logging.getLogger(__name__)

# How long a drain waits for a flush already under way (a store that hangs must not hold the
# process forever; the drain's grace period is the outer bound).
CLOSE_WAIT_S = 10.0


@dataclass
class WriterStats:
    written: int = 0
    """Events the store has committed."""
    dropped: int = 0
    """Events refused because the buffer was full (the store was down for too long)."""
    failed_flushes: int = 0


def _ignore(kind: str, n: int) -> None:
    return None


class ResultsWriter:
    """Buffer and batches live on the event loop's thread; only a batch's copy crosses to the
    worker thread that writes it, and a flush's result is applied back on the loop."""

    def __init__(
        self,
        store: ResultsStore,
        flush_seconds: float,
        max_buffer: int,
        on_dropped: Callable[[str, int], None] = _ignore,
    ) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.max_buffer = max_buffer
        self.on_dropped = on_dropped
        self.stats = WriterStats()
        self._exposures: list[Exposure] = []
        self._outcomes: list[Outcome] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._down_since_logged = False
        self._in_flight = 0

    @property
    def pending(self) -> int:
        """Events not yet committed: buffered, and in the batch being written."""
        return len(self._exposures) + len(self._outcomes) + self._in_flight

    def add_exposure(self, exposure: Exposure) -> None:
        if self._room("exposure"):
            self._exposures.append(exposure)

    def add_outcome(self, outcome: Outcome) -> None:
        if self._room("outcome"):
            self._outcomes.append(outcome)

    def _room(self, kind: str) -> bool:
        if self.pending < self.max_buffer:
            return True
        self.stats.dropped += 1
        self.on_dropped(kind, 1)
        return False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="results-writer")

    async def _run(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.flush_seconds)
            await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered; on failure keep it for the next flush. True when the
        buffer was written (or empty)."""
        async with self._flushing:
            batch, reports = self._exposures, self._outcomes
            if not batch and not reports:
                return True
            self._exposures, self._outcomes = [], []
            self._in_flight = len(batch) + len(reports)
            try:
                await asyncio.to_thread(self.store.write, batch, reports)
            except StoreError as exc:
                self._in_flight = 0
                # Back in front of what arrived meanwhile, in arrival order (the bound held:
                # the batch counted as pending while it was out).
                self._exposures = batch + self._exposures
                self._outcomes = reports + self._outcomes
                self.stats.failed_flushes += 1
                if not self._down_since_logged:
                    log.error(
                        "results store unavailable; %d events wait for it: %s",
                        self.pending,
                        exc,
                        extra={"event": "results_store_down"},
                    )
                    self._down_since_logged = True
                return False
            self._in_flight = 0
            self.stats.written += len(batch) + len(reports)
            if self._down_since_logged:
                log.info("results store back; the waiting events are written")
                self._down_since_logged = False
            return True

    async def close(self, attempts: int = 3) -> None:
        """Stop the timer and write everything buffered (at drain: a SIGTERM loses nothing
        while the store answers)."""
        if self._task is not None:
            # Not cancelled: a flush under way runs to its end (a cancelled one would leave
            # its batch in a thread the drain no longer waits for, and lose it).
            self._closing.set()
            _, running = await asyncio.wait({self._task}, timeout=CLOSE_WAIT_S)
            if running:
                log.error("results store: a flush still running after %.0f s", CLOSE_WAIT_S)
            self._task = None
        for _ in range(attempts):
            if await self.flush():
                break
            await asyncio.sleep(min(self.flush_seconds, 1.0))
        if self.pending:
            log.error("results store: %d events not written at shutdown", self.pending)
