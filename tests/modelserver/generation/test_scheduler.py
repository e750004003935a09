"""GenerationScheduler on its own: a scripted engine, a hand-moved clock and an executor the
test runs one model call at a time. No model, no threads, no sleeps: each step happens when
the test says so, and what the engine saw is compared call by call."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from modelserver.config import ContinuousBatching
from modelserver.errors import InferenceError
from modelserver.generation.scheduler import (
    Event,
    Finished,
    GenerationRequest,
    GenerationScheduler,
    Piece,
    Prefilled,
)
from tests.support.fakes import Calls, Clock

EOS = 0


@dataclass(frozen=True)
class Script:
    """A sequence whose tokens are known in advance: the engine answers with them in order."""

    name: str
    tokens: tuple[int, ...]


class ScriptEngine:
    """Rows of scripts, stepped in order; `log` is every call the scheduler made."""

    eos_id = EOS

    def __init__(self) -> None:
        self.rows: list[tuple[Script, int]] = []
        self.log: list[tuple[str, list[str]]] = []
        self.fail_next = False
        self.on_step: Callable[[int], None] = lambda steps: None
        """Runs after each step with the number of steps so far: the clock moving, an
        arrival landing while the inference thread decodes."""
        self.steps = 0

    def prefill(self, items: list[Any]) -> list[Prefilled]:
        self.log.append(("prefill", [s.name for s in items]))
        self.rows += [(s, 1) for s in items]
        return [Prefilled(s.tokens[0], {"EMBEDDING": np.array([len(s.name)])}) for s in items]

    def step(self) -> list[int]:
        self.log.append(("step", [s.name for s, _ in self.rows]))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device lost")
        tokens = [s.tokens[i] for s, i in self.rows]
        self.rows = [(s, i + 1) for s, i in self.rows]
        self.steps += 1
        self.on_step(self.steps)
        return tokens

    def keep(self, indices: list[int]) -> None:
        if indices != list(range(len(self.rows))):
            self.log.append(("keep", [self.rows[i][0].name for i in indices]))
        self.rows = [self.rows[i] for i in indices]


class Letters:
    """Token n is the n-th letter; the end adds nothing."""

    def put(self, token: int) -> str:
        return chr(ord("a") + token - 1)

    def end(self) -> str:
        return ""


class ManualExecutor(Executor):
    """Holds each model call until the test runs it."""

    def __init__(self) -> None:
        self.calls: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self.threads: set[int] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.calls.append((future, fn, args))
        return future

    def run_next(self) -> None:
        future, fn, args = self.calls.popleft()
        self.threads.add(threading.get_ident())
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)


async def settle() -> None:
    """Lets every task run until it waits on something (each turn is one loop iteration)."""
    for _ in range(50):
        await asyncio.sleep(0)


class Caller:
    """A client of `generate`: collects its events, or the error it ended with."""

    def __init__(
        self, scheduler: GenerationScheduler, request: GenerationRequest, deadline: float | None
    ) -> None:
        self.events: list[Event] = []
        self.error: InferenceError | None = None
        self.task = asyncio.create_task(self._run(scheduler, request, deadline))

    async def _run(
        self, scheduler: GenerationScheduler, request: GenerationRequest, deadline: float | None
    ) -> None:
        try:
            async for event in scheduler.generate(request, deadline):
                self.events.append(event)
        except InferenceError as exc:
            self.error = exc

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Piece))

    @property
    def finished(self) -> Finished:
        last = self.events[-1]
        assert isinstance(last, Finished), self.events
        return last


class Rig:
    def __init__(self, **settings: Any) -> None:
        self.engine = ScriptEngine()
        self.executor = ManualExecutor()
        self.clock = Clock(100.0)
        self.calls = Calls()
        # One step per model call unless a test asks for more (the clock here moves by hand).
        settings.setdefault("max_call_ms", 0)
        self.scheduler = GenerationScheduler(
            self.engine,
            ContinuousBatching(**settings),
            self.executor,
            clock=self.clock,
            observer=self.calls,
        )
        self.scheduler.start()
        self.callers: list[Caller] = []

    def request(
        self, name: str, tokens: tuple[int, ...], max_new: int = 10, deadline: float | None = None
    ) -> Caller:
        """A caller whose request reaches the scheduler at the test's next await."""
        request = GenerationRequest(Script(name, tokens), 4, max_new, Letters)
        self.callers.append(Caller(self.scheduler, request, deadline))
        return self.callers[-1]

    async def send(
        self, name: str, tokens: tuple[int, ...], max_new: int = 10, deadline: float | None = None
    ) -> Caller:
        """A request the worker has seen (and, with a free slot, submitted its prefill for)."""
        caller = self.request(name, tokens, max_new, deadline)
        await settle()
        return caller

    async def step(self, n: int = 1) -> None:
        """Runs the worker's next `n` model calls."""
        for _ in range(n):
            await settle()
            assert self.executor.calls, "the worker made no model call"
            self.executor.run_next()
            await settle()

    async def stop(self) -> None:
        await self.scheduler.stop()
        await settle()
        for caller in self.callers:
            caller.task.cancel()
        await settle()


async def test_sequences_join_and_leave_the_running_batch_at_step_boundaries() -> None:
    rig = Rig()
    a = await rig.send("A", (1, 2, 3, 4, EOS))
    await rig.step(2)  # A's prefill and a step; the worker has submitted A's next step
    b = await rig.send("B", (5, 6, EOS))
    await rig.step(5)
    assert not rig.executor.calls  # the batch is empty and the worker waits
    assert rig.engine.log == [
        ("prefill", ["A"]),
        ("step", ["A"]),
        ("step", ["A"]),  # under way when B arrived
        ("step", ["A"]),  # B joins in the next model call, after the running rows' step
        ("prefill", ["B"]),
        ("step", ["A", "B"]),  # A answers EOS, B its second token
        ("keep", ["B"]),  # A leaves the batch the step after it ended
        ("step", ["B"]),  # B's EOS
        ("keep", []),
    ]
    assert (a.text, a.finished.reason, a.finished.output_tokens) == ("abcd", "stop", 4)
    assert (b.text, b.finished.reason, b.finished.output_tokens) == ("ef", "stop", 2)
    assert a.finished.batch_size == b.finished.batch_size == 2
    assert b.finished.outputs["EMBEDDING"].tolist() == [1]
    stats = rig.scheduler.stats
    assert (stats.submitted, stats.finished, stats.decoded_tokens, stats.steps) == (2, 2, 8, 5)
    assert rig.scheduler.occupancy == 0 and rig.calls.succeeded == 7
    await rig.stop()


async def test_max_new_tokens_ends_an_answer_with_length() -> None:
    rig = Rig()
    a = await rig.send("A", (1, 2, 3, 4, EOS), max_new=2)
    await rig.step(2)
    assert (a.text, a.finished.reason, a.finished.output_tokens) == ("ab", "length", 2)
    await rig.stop()


async def test_a_cancelled_caller_leaves_at_the_next_step_and_a_waiting_one_never_starts() -> None:
    rig = Rig(max_sequences=1)
    a = await rig.send("A", (1, 2, 3, 4, 5, 6, EOS))
    await rig.step(2)  # A's next step is under way
    waiting = await rig.send("W", (1, EOS))
    assert rig.scheduler.depth == 1  # one row at most: W waits for A's slot
    waiting.task.cancel()
    a.task.cancel()
    await settle()
    assert rig.scheduler.depth == 0
    await rig.step(2)  # the step under way, then the pass that retires A
    assert rig.engine.log[-2:] == [("step", ["A"]), ("keep", [])]
    assert not rig.executor.calls  # nothing left to compute
    assert all(name != "W" for _, names in rig.engine.log for name in names)
    stats = rig.scheduler.stats
    # The step already under way is the only one spent on A after its caller went.
    assert (stats.cancelled, stats.decoded_after_cancel, stats.finished) == (2, 1, 0)
    await rig.stop()


async def test_deadlines_fail_running_and_waiting_sequences() -> None:
    rig = Rig(max_sequences=1)
    a = await rig.send("A", (1, 2, 3, 4, 5, 6, EOS), deadline=110.0)
    await rig.step(2)
    w = await rig.send("W", (1, EOS), deadline=105.0)
    rig.clock.now = 111.0
    await rig.step(1)  # A's step under way; the worker's next pass retires both
    assert a.error is not None and a.error.status is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "after 3 tokens" in a.error.message
    assert w.error is not None and "waiting for a slot" in w.error.message
    assert rig.scheduler.stats.expired == 2
    await rig.step(1)
    assert rig.engine.log[-1] == ("keep", [])
    await rig.stop()


async def test_the_kv_budget_holds_newcomers_until_a_row_leaves_and_refuses_the_impossible() -> (
    None
):
    rig = Rig(kv_budget_tokens=30)  # each sequence reserves 4 + 10 = 14 slots
    a, b, c = (
        rig.request("A", (1, EOS)),
        rig.request("B", (1, 2, 3, EOS)),
        rig.request("C", (7, EOS)),
    )
    await rig.step(1)
    assert rig.engine.log == [("prefill", ["A", "B"])]  # 2 x 14 fits, 3 x 14 does not
    assert rig.scheduler.kv_reserved == 28 and rig.scheduler.depth == 1
    await rig.step(1)  # A ends
    await rig.step(1)  # A leaves, C takes its slot
    assert rig.engine.log[-3:] == [("keep", ["B"]), ("step", ["B"]), ("prefill", ["C"])]
    assert a.finished.reason == "stop" and c.text == "g"
    too_long = GenerationRequest(Script("X", (1,)), 4, 100, Letters)
    with pytest.raises(InferenceError) as info:
        await anext(rig.scheduler.generate(too_long))
    assert info.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "104 KV-cache slots" in info.value.message and "budget is 30" in info.value.message
    await rig.step(2)
    assert b.text == "abc"
    await rig.stop()


async def test_the_waiting_queue_is_bounded() -> None:
    rig = Rig(max_sequences=1, max_waiting=1)
    await rig.send("A", (1, 2, EOS))  # its prefill is held: A runs, B waits
    b = await rig.send("B", (1, EOS))
    c = await rig.send("C", (1, EOS))
    assert c.error is not None and c.error.status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 sequences waiting" in c.error.message
    assert rig.scheduler.stats.rejected == 1 and b.error is None
    await rig.stop()
    assert b.error is not None and b.error.status is grpc.StatusCode.UNAVAILABLE


async def test_a_failed_step_fails_its_rows_and_the_next_request_starts_clean() -> None:
    rig = Rig()
    a = await rig.send("A", (1, 2, 3, EOS))
    await rig.step(1)
    rig.engine.fail_next = True
    await rig.step(1)
    assert a.error is not None and a.error.status is grpc.StatusCode.INTERNAL
    assert "RuntimeError" in a.error.message
    assert rig.engine.rows == [] and rig.scheduler.faults == 1
    assert [type(e) for e in rig.calls.failed] == [RuntimeError]
    b = await rig.send("B", (2, EOS))
    await rig.step(2)
    assert b.text == "b" and rig.calls.succeeded == 3
    await rig.stop()


async def test_the_engine_is_the_only_thing_the_model_call_touches() -> None:
    """The call on the inference thread returns values; sequences and statistics change only
    when the worker applies them on the event loop."""
    rig = Rig()
    a = await rig.send("A", (1, 2, EOS))
    await settle()
    future, fn, args = rig.executor.calls.popleft()
    before = (rig.scheduler.stats.decoded_tokens, list(a.events))
    result = fn(*args)  # what the inference thread would run
    assert (rig.scheduler.stats.decoded_tokens, a.events) == before
    future.set_result(result)
    await settle()
    assert rig.scheduler.stats.decoded_tokens == 1 and a.text == "a"
    await rig.stop()


def _tick(rig: Rig, seconds: float) -> None:
    """Each decode step takes `seconds` of the rig's clock."""

    def advance(steps: int) -> None:
        rig.clock.now += seconds

    rig.engine.on_step = advance


def _texts(caller: Caller) -> list[str]:
    return [e.text for e in caller.events if isinstance(e, Piece)]


async def test_steps_run_back_to_back_and_stream_as_one_piece_per_call() -> None:
    rig = Rig(max_call_ms=20)
    _tick(rig, 0.004)
    a = await rig.send("A", (1, 2, 3, 4, 5, 6, 7, 8, 9, EOS), max_new=20)
    await rig.step(1)  # the prefill: its token is a piece of its own
    await rig.step(1)  # five 4 ms steps fill the 20 ms
    assert rig.engine.log == [("prefill", ["A"]), *[("step", ["A"])] * 5]
    assert _texts(a) == ["a", "bcdef"]
    await rig.step(1)  # three more tokens, then the end of sequence ends the call
    assert _texts(a) == ["a", "bcdef", "ghi"] and a.finished.reason == "stop"
    assert (rig.scheduler.stats.steps, rig.scheduler.stats.decoded_tokens) == (9, 10)
    await rig.stop()


async def test_a_call_never_decodes_past_an_answer_s_last_allowed_token() -> None:
    rig = Rig(max_call_ms=1000)
    _tick(rig, 0.001)
    a = await rig.send("A", tuple(range(1, 20)), max_new=4)
    await rig.step(2)
    assert rig.engine.log == [("prefill", ["A"]), *[("step", ["A"])] * 3]
    assert (a.text, a.finished.reason, a.finished.output_tokens) == ("abcd", "length", 4)
    assert rig.scheduler.stats.decoded_tokens == 4
    await rig.stop()


async def test_an_arrival_ends_a_call_after_the_step_under_way() -> None:
    rig = Rig(max_call_ms=1000)
    _tick(rig, 0.001)
    a = await rig.send("A", tuple(range(1, 30)), max_new=25)
    await rig.step(1)  # A's prefill; the worker has handed the inference thread its steps
    await rig.send("B", (5, EOS))  # B arrives while that call is in flight
    await rig.step(1)
    assert rig.engine.log[1:] == [("step", ["A"])]  # it stopped after the step under way
    await rig.step(1)  # the next call: a step for A, then B's prefill
    assert rig.engine.log[-2:] == [("step", ["A"]), ("prefill", ["B"])]
    assert _texts(a)[:2] == ["a", "b"]
    await rig.stop()


async def test_a_cancellation_or_a_deadline_ends_a_call_after_the_step_under_way() -> None:
    rig = Rig(max_call_ms=1000)
    _tick(rig, 0.001)
    a = await rig.send("A", tuple(range(1, 30)), max_new=25, deadline=100.0035)
    await rig.step(2)
    # Steps end at 100.001, .002, .003, .004: the one that passes the deadline is the last.
    assert rig.engine.log[1:] == [("step", ["A"])] * 4
    await rig.step(1)
    assert a.error is not None and a.error.status is grpc.StatusCode.DEADLINE_EXCEEDED
    b = await rig.send("B", tuple(range(1, 30)), max_new=25)
    await rig.step(1)  # B's prefill; its steps are in flight when its caller goes away
    b.task.cancel()
    await settle()
    before = len(rig.engine.log)
    await rig.step(2)  # the call in flight stops after one step; the next retires B
    assert rig.engine.log[before:] == [("step", ["B"]), ("keep", [])]
    stats = rig.scheduler.stats
    assert (stats.cancelled, stats.decoded_after_cancel) == (1, 1)
    await rig.stop()
