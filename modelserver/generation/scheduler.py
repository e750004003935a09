"""Continuous batching: one running decode batch, stepped one token at a time.

Each iteration of the worker retires the sequences that finished, were cancelled or ran out of
time, decodes one token for every remaining row, then prefills newly admitted sequences into
the batch. So a short answer leaves the step it ends, a new request waits at most one step to
start, and a caller that went away costs at most the step already under way.

All scheduler state lives on the event loop, as vLLM's `update_from_output` keeps it: the
engine runs on the inference thread and only returns tokens (`_Step`); the worker applies
them. Requests are immutable; a sequence's progress is the scheduler's own `_Sequence`.

Admission is bounded by a KV budget counted the way the cache is laid out: rows are padded to
the longest, so a batch holds `rows x max(prompt + max_new_tokens)` slots at most. Each
sequence reserves its worst case when it joins, so a running sequence never has to be evicted.
Beyond the budget sequences wait in arrival order (no overtaking, so none starves); beyond
`max_waiting` they are refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np

from modelserver.config import ContinuousBatching
from modelserver.errors import InferenceError, exhausted, unavailable
from modelserver.worker import UNOBSERVED, CallObserver, WorkLoop


class Engine(Protocol):
    """A model's running decode batch (family code); called on the inference thread only."""

    eos_id: int

    def prefill(self, items: list[Any]) -> list[Prefilled]:
        """Appends a row for each item (`GenerationRequest.item`)."""

    def step(self) -> list[int]:
        """One token for every row, in row order."""

    def keep(self, indices: list[int]) -> None:
        """Keeps only these rows, in this order; [] empties the batch."""


@dataclass(frozen=True)
class Prefilled:
    """A new row's first token, and outputs besides the text computed on the way (GAMA:
    EMBEDDING)."""

    token: int
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)


class Detokenizer(Protocol):
    """Turns one sequence's tokens into text pieces (modelserver/generation/pieces.py)."""

    def put(self, token: int) -> str: ...

    def end(self) -> str: ...


@dataclass(frozen=True)
class GenerationRequest:
    """What a family hands the scheduler for one sequence."""

    item: Any
    """Passed to `Engine.prefill`."""
    input_tokens: int
    """Prompt positions (for GAMA: the audio prefix and the prompt's tokens)."""
    max_new_tokens: int
    detokenizer: Callable[[], Detokenizer]
    """A fresh detokenizer for this sequence."""


@dataclass(frozen=True)
class Piece:
    text: str
    output_tokens: int


@dataclass(frozen=True)
class Finished:
    reason: str
    """`stop` (end of sequence) or `length` (max_new_tokens)."""
    input_tokens: int
    output_tokens: int
    queue_ms: float
    """Arrival to the start of its prefill."""
    first_token_ms: float
    """Arrival to its first token."""
    decode_ms: float
    """First token to last."""
    batch_size: int
    """Most rows of a step it took part in."""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    """What the engine attached at prefill."""


Event = Piece | Finished


@dataclass
class GenerationStats:
    submitted: int = 0
    rejected: int = 0
    finished: int = 0
    cancelled: int = 0
    expired: int = 0
    steps: int = 0
    decoded_tokens: int = 0
    """Tokens computed, prefill's first tokens included: what the model spent."""
    decoded_after_cancel: int = 0
    """Tokens computed for sequences whose caller had already gone (at most a step each)."""


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    deadline: float | None
    enqueued: float
    pieces: Detokenizer
    events: asyncio.Queue[Event | InferenceError] = field(default_factory=asyncio.Queue)
    tokens: list[int] = field(default_factory=list)
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    cancelled: bool = False
    done: bool = False
    started: float = 0.0
    first_token: float = 0.0
    batch_size: int = 0

    @property
    def reserve(self) -> int:
        return self.request.input_tokens + self.request.max_new_tokens


@dataclass(frozen=True)
class _Step:
    """What one model call returned: for each decode step a token per running row, then the
    newcomers' prefills."""

    steps: list[list[int]]
    prefilled: list[Prefilled]
    at: float


class GenerationScheduler(WorkLoop):
    name = "generation"

    def __init__(
        self,
        engine: Engine,
        settings: ContinuousBatching,
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver = UNOBSERVED,
    ) -> None:
        super().__init__(executor, clock, observer)
        self.engine = engine
        self.settings = settings
        if not isinstance(settings.kv_budget_tokens, int):
            raise ValueError("kv_budget_tokens: planned (modelserver/plan.py) before scheduling")
        self.kv_budget: int = settings.kv_budget_tokens
        """KV-cache slots in flight at most: the configured number, or the planned one."""
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._wakeup = asyncio.Event()
        self._attention = threading.Event()
        """Set on the event loop when the scheduler is needed (an arrival, a cancellation);
        read by the inference thread between decode steps: a read, never a state change."""
        self.stats = GenerationStats()

    # -- state (reads only) --------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Sequences waiting for a slot."""
        return len(self._waiting)

    @property
    def occupancy(self) -> int:
        """Rows of the running decode batch."""
        return len(self._running)

    @property
    def kv_reserved(self) -> int:
        """KV slots the running batch may reach: rows x the longest reservation."""
        return _footprint(len(self._running), max((s.reserve for s in self._running), default=0))

    # -- lifecycle (start, close, stop: WorkLoop) ------------------------------------------

    def _fail_pending(self, error: InferenceError) -> None:
        for seq in [*self._running, *self._waiting]:
            self._fail(seq, error)
        self._running, self._waiting = [], deque()

    # -- requests ------------------------------------------------------------------------------

    async def generate(
        self, request: GenerationRequest, deadline: float | None = None
    ) -> AsyncGenerator[Event, None]:
        """Pieces of the answer as they are decoded, then `Finished`. Closing the iterator
        early (or cancelling its consumer) removes the sequence at the next step."""
        seq = self._enqueue(request, deadline)
        try:
            while True:
                event = await seq.events.get()
                if isinstance(event, InferenceError):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if not seq.done:
                seq.cancelled = True
                self._attention.set()
                if seq in self._waiting:
                    self._waiting.remove(seq)
                    seq.done = True
                    self.stats.cancelled += 1

    def _enqueue(self, request: GenerationRequest, deadline: float | None) -> _Sequence:
        s = self.settings
        if self._closed:
            raise unavailable("the model server is draining and takes no new requests")
        seq = _Sequence(request, deadline, self._clock(), request.detokenizer())
        if seq.reserve > self.kv_budget:
            self.stats.rejected += 1
            raise exhausted(
                f"this answer may need {seq.reserve} KV-cache slots ({request.input_tokens} "
                f"prompt + {request.max_new_tokens} max_new_tokens); the model's budget is "
                f"{self.kv_budget}: ask for fewer max_new_tokens"
            )
        if len(self._waiting) >= s.max_waiting:
            self.stats.rejected += 1
            raise exhausted(
                f"the generation queue is full ({len(self._waiting)} sequences waiting for a "
                f"slot, {len(self._running)} decoding); retry with backoff or send to another "
                "replica"
            )
        self._waiting.append(seq)
        self.stats.submitted += 1
        self._wakeup.set()
        self._attention.set()
        return seq

    # -- the worker ----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            now = self._clock()
            self._expire_waiting(now)
            keep = [i for i, seq in enumerate(self._running) if self._keep_or_retire(seq, now)]
            running = [self._running[i] for i in keep]
            admitted = self._admit(running)
            if not running and not admitted and not self._running:
                self._wakeup.clear()
                if not self._waiting:
                    await self._wakeup.wait()
                continue
            items = [seq.request.item for seq in admitted]
            # Cleared here, before the call: whatever arrives from now on interrupts it.
            self._attention.clear()
            plan = _Plan(
                keep=keep,
                items=items,
                room=min((s.request.max_new_tokens - len(s.tokens) for s in running), default=0),
                deadline=min((s.deadline for s in running if s.deadline is not None),
                             default=None),
            )  # fmt: skip
            try:
                step = await self._call_model(
                    "while generating", len(running) + len(admitted), self._iterate, plan
                )
            except InferenceError as error:
                for seq in [*running, *admitted]:
                    self._fail(seq, error)
                self._running = []
                continue
            self._running = [*running, *admitted]
            self._apply(running, admitted, step)

    def _keep_or_retire(self, seq: _Sequence, now: float) -> bool:
        """Retires a sequence that finished, was cancelled or ran out of time (and fails the
        last with DEADLINE_EXCEEDED); True when it stays in the batch."""
        if seq.done:
            return False
        if seq.cancelled:
            seq.done = True
            self.stats.cancelled += 1
            return False
        if seq.deadline is not None and now >= seq.deadline:
            self.stats.expired += 1
            self._fail(
                seq,
                InferenceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline passed after {len(seq.tokens)} tokens; the answer was cut short",
                ),
            )
            return False
        return True

    def _expire_waiting(self, now: float) -> None:
        for seq in [s for s in self._waiting if s.deadline is not None and now >= s.deadline]:
            self._waiting.remove(seq)
            self.stats.expired += 1
            self._fail(
                seq,
                InferenceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while waiting for a slot"
                ),
            )

    def _admit(self, running: list[_Sequence]) -> list[_Sequence]:
        s = self.settings
        admitted: list[_Sequence] = []
        longest = max((seq.reserve for seq in running), default=0)
        while self._waiting and len(admitted) < s.max_prefill_per_step:
            seq = self._waiting[0]
            rows = len(running) + len(admitted) + 1
            widest = max(longest, seq.reserve)
            if rows > s.max_sequences or _footprint(rows, widest) > self.kv_budget:
                break
            self._waiting.popleft()
            seq.started = self._clock()
            admitted.append(seq)
            longest = widest
        return admitted

    def _iterate(self, plan: _Plan) -> _Step:
        """On the inference thread: retire, decode, prefill the newcomers. It touches the
        engine only; the worker applies what it returns.

        Decoding goes on step after step while nothing needs the scheduler, for up to
        `max_call_ms`: a row that ends (end of sequence, or its last allowed token), a
        newcomer to prefill, an arrival or cancellation (`_attention`) or a deadline stop it
        after the step under way, so every sequence leaves the batch the step it would have
        left with one step per call."""
        engine = self.engine
        steps: list[list[int]] = []
        try:
            engine.keep(plan.keep)
            if plan.keep:  # rows stay to decode
                until = self._clock() + self.settings.max_call_ms / 1000
                while True:
                    tokens = engine.step()
                    steps.append(tokens)
                    now = self._clock()
                    if (
                        plan.items
                        or len(steps) >= plan.room
                        or engine.eos_id in tokens
                        or self._attention.is_set()
                        or now >= until
                        or (plan.deadline is not None and now >= plan.deadline)
                    ):
                        break
            prefilled = engine.prefill(plan.items) if plan.items else []
        except Exception:
            engine.keep([])
            raise
        return _Step(steps, prefilled, self._clock())

    def _apply(self, running: list[_Sequence], admitted: list[_Sequence], step: _Step) -> None:
        rows = len(running) + len(admitted)
        self.stats.steps += len(step.steps)
        for seq, prefilled in zip(admitted, step.prefilled, strict=True):
            seq.outputs = prefilled.outputs
        # Each sequence's tokens of this call, in order: a piece per call, not per token.
        taken: list[list[int]] = [[] for _ in running]
        for tokens in step.steps:
            for row, token in enumerate(tokens):
                taken[row].append(token)
        taken += [[p.token] for p in step.prefilled]
        for seq, tokens in zip([*running, *admitted], taken, strict=True):
            self.stats.decoded_tokens += len(tokens)
            if seq.cancelled:
                self.stats.decoded_after_cancel += len(tokens)
            seq.batch_size = max(seq.batch_size, rows)
            if not seq.first_token:
                seq.first_token = step.at
            for event in self._accept(seq, tokens, step.at):
                seq.events.put_nowait(event)

    def _accept(self, seq: _Sequence, tokens: list[int], now: float) -> list[Event]:
        request = seq.request
        reason = None
        text = ""
        for token in tokens:
            if token == self.engine.eos_id:
                reason = "stop"
                break
            seq.tokens.append(token)
            text += seq.pieces.put(token)
            if len(seq.tokens) >= request.max_new_tokens:
                reason = "length"
                break
        if reason is None:
            return [Piece(text, len(seq.tokens))] if text else []
        text += seq.pieces.end()
        seq.done = True
        self.stats.finished += 1
        finished = Finished(
            reason=reason,
            input_tokens=request.input_tokens,
            output_tokens=len(seq.tokens),
            queue_ms=(seq.started - seq.enqueued) * 1000,
            first_token_ms=(seq.first_token - seq.enqueued) * 1000,
            decode_ms=(now - seq.first_token) * 1000,
            batch_size=seq.batch_size,
            outputs=dict(seq.outputs),
        )
        return [Piece(text, len(seq.tokens)), finished] if text else [finished]

    @staticmethod
    def _fail(seq: _Sequence, error: InferenceError) -> None:
        if not seq.done:
            seq.done = True
            seq.events.put_nowait(error)


@dataclass(frozen=True)
class _Plan:
    """What the worker hands one model call."""

    keep: list[int]
    """Rows of the running batch that stay, in order (none: nothing to decode)."""
    items: list[Any]
    """Newcomers to prefill after the decode steps."""
    room: int
    """Tokens the closest-to-its-limit running row may still take."""
    deadline: float | None
    """The earliest running deadline."""


def _footprint(rows: int, longest: int) -> int:
    return rows * longest
