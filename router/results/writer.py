"""Events off the request path: kept in a bounded buffer on the event loop, written in batches
every `flush_ms` by a worker thread (one transaction per batch), all of them at drain. While the
store is down they wait and go in the first flush after it is back; beyond `max_buffer` new
events are dropped and counted, so serving never waits on the database and memory stays
bounded. A batch the database refuses for what it holds is split in halves until the rows it
refuses are alone; those are set aside as dead letters and the rest are written, so no row can
hold the others back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from router.metrics import Unmeasured
from router.results.store import (
    Event,
    Exposure,
    Outcome,
    ResultsStore,
    RowsRejected,
    StoreError,
    event_kind,
)

log = logging.getLogger(__name__)

# How long a drain waits for a flush already under way (a store that hangs must not hold the
# process forever; the drain's grace period is the outer bound).
CLOSE_WAIT_S = 10.0

# A reused request id is logged at most this often (each one is counted).
REUSED_LOG_EVERY_S = 60.0


class WriterObserver(Protocol):
    """What the writer reports (RouterMetrics implements it; names in docs/observability.md)."""

    def results_dropped(self, kind: str, n: int) -> None: ...

    def results_set_aside(self, kind: str, n: int) -> None: ...

    def request_ids_reused(self, n: int) -> None: ...


@dataclass
class WriterStats:
    written: int = 0
    """Events the store has committed."""
    dropped: int = 0
    """Events refused because the buffer was full (the store was down for too long), or
    refused by the store when the dead letters were full."""
    set_aside: int = 0
    """Events the store refused on their own, kept as dead letters."""
    reused: int = 0
    """Exposures whose request id an earlier request had (not stored; outcomes join the
    first)."""
    failed_flushes: int = 0


@dataclass
class Flushed:
    """What one flush did, computed in the worker thread and applied on the event loop."""

    written: int = 0
    refused: list[tuple[Event, str]] = field(default_factory=list)
    kept: int = 0
    """How many of `refused` the dead letters took."""
    reused: list[str] = field(default_factory=list)
    unwritten: list[Event] = field(default_factory=list)
    """Left when the store went away mid-flush: back to the buffer."""
    error: StoreError | None = None


def write_isolating(
    store: ResultsStore, events: Sequence[Event], dead_letter_limit: int, now: float
) -> Flushed:
    """Write `events`; a part the store refuses for its data is halved until each refused
    event is alone, and those are set aside. Stops at the first connection failure, leaving
    the rest unwritten. In the worker thread: touches nothing but the store."""
    done = Flushed()
    parts = [list(events)]
    while parts:
        part = parts.pop()
        try:
            done.reused += store.write(
                [e for e in part if isinstance(e, Exposure)],
                [e for e in part if isinstance(e, Outcome)],
            )
        except RowsRejected as exc:
            if len(part) == 1:
                done.refused.append((part[0], exc.reason))
            else:
                # First half on top: the parts are written in arrival order.
                parts += [part[len(part) // 2 :], part[: len(part) // 2]]
            continue
        except StoreError as exc:
            done.unwritten = [e for p in (part, *reversed(parts)) for e in p]
            done.error = exc
            return done
        done.written += len(part)
    try:
        done.kept = store.set_aside(done.refused, now, dead_letter_limit)
    except StoreError as exc:
        # The refused events stay refused; they wait with the rest for the store to return.
        done.unwritten = [e for e, _ in done.refused]
        done.refused = []
        done.error = exc
    return done


class ResultsWriter:
    """Buffer and batches live on the event loop's thread; only a batch's copy crosses to the
    worker thread that writes it, and a flush's result is applied back on the loop."""

    def __init__(
        self,
        store: ResultsStore,
        flush_seconds: float,
        max_buffer: int,
        observer: WriterObserver | None = None,
        dead_letter_limit: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.max_buffer = max_buffer
        self.observer: WriterObserver = observer or Unmeasured()
        self.dead_letter_limit = dead_letter_limit
        self.clock = clock
        self.stats = WriterStats()
        self._events: list[Event] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._down_since_logged = False
        self._in_flight = 0
        self._reused_logged_at = -REUSED_LOG_EVERY_S
        self._reused_since_log = 0

    @property
    def pending(self) -> int:
        """Events not yet committed: buffered, and in the batch being written."""
        return len(self._events) + self._in_flight

    def add_exposure(self, exposure: Exposure) -> None:
        self._add(exposure)

    def add_outcome(self, outcome: Outcome) -> None:
        self._add(outcome)

    def _add(self, event: Event) -> None:
        if self.pending < self.max_buffer:
            self._events.append(event)
            return
        self.stats.dropped += 1
        self.observer.results_dropped(event_kind(event), 1)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="results-writer")

    async def _run(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.flush_seconds)
            await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered; what the store could not take for want of a connection
        stays for the next flush. True when the buffer was written (or empty)."""
        async with self._flushing:
            batch, self._events = self._events, []
            if not batch:
                return True
            self._in_flight = len(batch)
            try:
                done = await asyncio.to_thread(
                    write_isolating, self.store, batch, self.dead_letter_limit, self.clock()
                )
            except BaseException:
                self._events = batch + self._events  # a bug or a cancel loses nothing
                raise
            finally:
                self._in_flight = 0
            self._apply(done)
            return done.error is None

    def _apply(self, done: Flushed) -> None:
        self.stats.written += done.written
        self._set_aside(done)
        self._reused(done.reused)
        if done.error is None:
            if self._down_since_logged:
                log.info("results store back; the waiting events are written")
                self._down_since_logged = False
            return
        # Back in front of what arrived meanwhile, in arrival order (the bound held: the
        # batch counted as pending while it was out).
        self._events = done.unwritten + self._events
        self.stats.failed_flushes += 1
        if not self._down_since_logged:
            log.error(
                "results store unavailable; %d events wait for it: %s",
                self.pending,
                done.error,
                extra={"event": "results_store_down"},
            )
            self._down_since_logged = True

    def _set_aside(self, done: Flushed) -> None:
        for i, (event, reason) in enumerate(done.refused):
            kept = i < done.kept
            kind = event_kind(event)
            if kept:
                self.stats.set_aside += 1
                self.observer.results_set_aside(kind, 1)
            else:
                self.stats.dropped += 1
                self.observer.results_dropped(kind, 1)
            log.error(
                "results store refused an %s (request id %r): %s; %s",
                kind,
                event.request_id[:64],
                reason,
                "set aside as a dead letter" if kept else "dropped: the dead letters are full",
                extra={"event": "results_dead_letter" if kept else "results_dropped"},
            )

    def _reused(self, ids: list[str]) -> None:
        if not ids:
            return
        self.stats.reused += len(ids)
        self.observer.request_ids_reused(len(ids))
        self._reused_since_log += len(ids)
        now = self.clock()
        if now - self._reused_logged_at >= REUSED_LOG_EVERY_S:
            log.warning(
                "request ids reused by another request: %s (%d reused since the last such "
                "line); only the first exposure of an id counts, and outcomes join it: send a "
                "new request_id per request",
                ", ".join(repr(i[:64]) for i in ids[:3]),
                self._reused_since_log,
                extra={"event": "request_id_reused"},
            )
            self._reused_logged_at, self._reused_since_log = now, 0

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
