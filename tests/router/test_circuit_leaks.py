"""Half-open probe permits are settled on every path (recorded, or given back when the call
never happened or never finished), HALF_OPEN has a maximum wait, and reading a breaker's
state never moves it. The dispatcher runs against real fault-injecting model servers, with an
injected clock for the breaker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gamaserving.router.v1 import router_pb2 as rpb
from router.backends.model import ModelBackend
from router.config import ModelSettings, RouteSettings
from router.errors import RouteError
from router.failover.circuit import State
from router.failover.dispatch import Dispatcher
from router.requests import RouteRequest
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.breakers import breaker
from tests.support.fakes import Clock
from tests.support.fault_server import fault_server

ROUTE = RouteSettings(primary="m")
REQUEST = RouteRequest(request_id="r1", task="embed", audio=wav(0.2))


def backend(targets: list[str], clock: Clock, ratio: float = 0.2) -> ModelBackend:
    settings = ModelSettings.model_validate(
        {
            "endpoints": targets,
            "timeout_ms": 5000,
            "circuit_breaker": {"min_calls": 2, "open_seconds": 5, "half_open_probes": 1},
            "retry_budget": {"ratio": ratio},
        }
    )
    b = ModelBackend("m", settings, 1 << 22, clock)
    for endpoint in b.endpoints:
        endpoint.serving = True  # no health Watch in these tests: the breaker is the subject
    return b


def half_open(b: ModelBackend, index: int, clock: Clock) -> None:
    breaker_ = b.endpoints[index].breaker
    breaker_.record(False, 0.01)
    breaker_.record(False, 0.01)
    assert breaker_.state is State.OPEN
    clock.now += 5


def dispatcher(clock: Clock) -> Dispatcher:
    return Dispatcher(lambda *_: None, clock)


async def test_a_permit_refused_by_the_retry_budget_is_given_back() -> None:
    clock = Clock()
    async with (
        fault_server("m", mode="unavailable") as (_, down),
        fault_server("m") as (_, up),
    ):
        b = backend([down, up], clock, ratio=0.0)  # no retry tokens ever
        half_open(b, 1, clock)
        try:
            with pytest.raises(RouteError):
                await dispatcher(clock).run(ROUTE, REQUEST, [b], clock.now + 10)
            second = b.endpoints[1].breaker
            assert second.state is State.HALF_OPEN and second.probes_out == 0
            assert second.try_acquire_permission(), (
                "the probe permit leaked on the retry-budget path"
            )
        finally:
            await b.close()


async def test_a_permit_taken_after_the_deadline_passed_is_given_back() -> None:
    clock = Clock()
    async with fault_server("m") as (_, up):
        b = backend([up], clock)
        half_open(b, 0, clock)
        try:
            with pytest.raises(RouteError, match="deadline"):
                await dispatcher(clock).run(ROUTE, REQUEST, [b], clock.now)
            assert b.endpoints[0].breaker.probes_out == 0
            assert b.endpoints[0].breaker.try_acquire_permission(), (
                "the probe permit leaked on the deadline path"
            )
        finally:
            await b.close()


async def test_a_permit_of_a_cancelled_call_is_given_back() -> None:
    clock = Clock()
    async with fault_server("m", delay=30.0) as (model, slow):
        b = backend([slow], clock)
        half_open(b, 0, clock)
        try:
            task = asyncio.ensure_future(dispatcher(clock).run(ROUTE, REQUEST, [b], clock.now + 60))
            await asyncio.wait_for(model.arrived.wait(), 10)
            assert b.endpoints[0].breaker.probes_out == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert b.endpoints[0].breaker.probes_out == 0
            assert b.endpoints[0].breaker.try_acquire_permission(), (
                "the probe permit leaked on cancellation"
            )
        finally:
            await b.close()


def test_half_open_opens_again_after_its_maximum_wait() -> None:
    cb, clock, changes = breaker(half_open_max_seconds=10)
    cb.record(False, 0.01)
    cb.record(False, 0.01)
    cb.record(False, 0.01)
    cb.record(False, 0.01)
    clock.now = 5.0
    assert (
        cb.try_acquire_permission()
        and cb.try_acquire_permission()
        and not cb.try_acquire_permission()
    )  # both permits out, never settled
    clock.now = 14.9
    assert not cb.try_acquire_permission() and cb.state is State.HALF_OPEN
    clock.now = 15.0
    assert (
        not cb.try_acquire_permission() and cb.state is State.OPEN
    )  # stuck probes give up the half-open
    clock.now = 20.0
    assert cb.try_acquire_permission() and cb.state is State.HALF_OPEN  # a fresh set of permits
    assert changes[-3:] == [
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
    ]


def test_reading_the_state_never_moves_it() -> None:
    cb, clock, changes = breaker()
    for _ in range(4):
        cb.record(False, 0.01)
    clock.now = 100.0
    seen = {cb.state for _ in range(50)} | {cb.in_service() for _ in range(50)}
    assert seen == {State.OPEN, True}  # available: the wait is over, a probe would go
    assert changes == [(State.CLOSED, State.OPEN)]  # no transition from reading
    assert cb.try_acquire_permission() and cb.state is State.HALF_OPEN
    assert changes[-1] == (State.OPEN, State.HALF_OPEN)


def test_release_never_frees_more_than_was_taken() -> None:
    cb, clock, _ = breaker()
    for _ in range(4):
        cb.record(False, 0.01)
    clock.now = 5.0
    assert cb.try_acquire_permission()
    cb.record(True, 0.01)  # one probe settled by its outcome
    cb.release()  # a stray release must not hand out a third permit
    assert cb.try_acquire_permission() and not cb.try_acquire_permission()


async def test_cancelled_probes_leave_the_endpoint_able_to_recover(tmp_path: Path) -> None:
    async with (
        fault_server("primary", mode="internal") as (primary, a),
        fault_server("backup") as (_, b),
    ):
        cfg = base_config(
            {"primary": [a], "backup": [b]}, embed={"primary": "primary", "fallbacks": ["backup"]}
        )
        cfg["models"]["primary"]["circuit_breaker"] = {
            "window": 4,
            "min_calls": 2,
            "open_seconds": 0.3,
            "half_open_probes": 2,
            "half_open_max_seconds": 600,  # recovery below must come from given-back permits
        }
        async with live_router(cfg, tmp_path) as router:
            for _ in range(4):
                await router.process(rpb.TASK_EMBED, wav(0.2))
            states = {s for m, _, s, _ in router.core.circuits() if m == "primary"}
            assert states == {State.OPEN}
            primary.mode, primary.delay = "ok", 30.0
            await asyncio.sleep(0.35)  # the open wait (0.3 s) is over: next calls are probes
            for _ in range(2):  # as many as there are probe permits
                primary.arrived.clear()
                call = router.stub.Process(rpb.ProcessRequest(audio=wav(0.2), task=rpb.TASK_EMBED))
                await asyncio.wait_for(primary.arrived.wait(), 10)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
            primary.delay = 0.0
            served = []
            for _ in range(20):
                r = await router.process(rpb.TASK_EMBED, wav(0.2))
                served.append((r.route.model, r.route.fallback_used))
                if served[-1] == ("primary", False):
                    break
                await asyncio.sleep(0.05)
            assert served[-1] == ("primary", False), served
            states = {s for m, _, s, _ in router.core.circuits() if m == "primary"}
            assert states <= {State.HALF_OPEN, State.CLOSED}
