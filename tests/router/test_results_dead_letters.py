"""Nothing a caller sends can stop the results: ids the store could not hold are refused at the
door, a row the store refuses anyway is set aside as a dead letter while the rest are written,
and a reused request id is counted (on SQLite and on a real PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from gamaserving.router.v1 import router_pb2 as rpb
from router.cli import main as router_main
from router.results.store import Exposure, Outcome, ResultsStore
from router.results.writer import REUSED_LOG_EVERY_S, ResultsWriter
from tests.router.conftest import base_config, live_router
from tests.support.audio import wav
from tests.support.fakes import Clock, Observed
from tests.support.fault_server import fault_server
from tests.support.postgres import Postgres

ODD = [
    ("request_id", "r" * 300, "request_id is 300 characters; at most 128"),
    ("request_id", "a\x00b", "request_id holds the character '\\x00'"),
    ("user_id", "u" * 400, "user_id is 400 characters; at most 128"),
    ("user_id", "caf\u00e9", "user_id holds the character '\\xe9'"),
]


def _url(engine: str, tmp_path: Path, postgres: Postgres | None) -> str:
    """A store of its own: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    assert postgres is not None
    return postgres.database(f"t{abs(hash(tmp_path)) % 10**9}")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    postgres = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return _url(request.param, tmp_path, postgres)


@pytest.fixture
def store(url: str) -> Iterator[ResultsStore]:
    s = ResultsStore(url)
    s.create()
    try:
        yield s
    finally:
        s.close()


def exposure(i: int, **fields: object) -> Exposure:
    values: dict[str, object] = {
        "request_id": f"r{i}", "experiment": "e", "seed": "s", "arm": "ab"[i % 2],
        "model": "m", "unit": f"u{i % 9}", "at": 1.0 + i, "latency_ms": 10.0, "error": False,
        "fallback": False, "quality_failed": False, **fields,
    }  # fmt: skip
    return Exposure(**values)  # type: ignore[arg-type]


def _refuse_poison(store: ResultsStore) -> None:
    """Make the store itself refuse a row: a CHECK constraint (PostgreSQL) or a trigger that
    aborts (SQLite cannot add a constraint to a table)."""
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE exposures ADD CONSTRAINT no_poison "
                              "CHECK (unit <> 'poison')"))  # fmt: skip
        else:
            conn.execute(text("CREATE TRIGGER no_poison BEFORE INSERT ON exposures "
                              "WHEN NEW.unit = 'poison' "
                              "BEGIN SELECT RAISE(ABORT, 'poison'); END"))  # fmt: skip


def _accept_poison(store: ResultsStore) -> None:
    with store.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE exposures DROP CONSTRAINT no_poison"))
        else:
            conn.execute(text("DROP TRIGGER no_poison"))


async def test_a_row_the_store_refuses_is_set_aside_and_the_rest_written(
    store: ResultsStore, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _refuse_poison(store)
    seen = Observed()
    writer = ResultsWriter(store, 3600, max_buffer=1000, observer=seen)
    poisoned = {17, 60}
    for i in range(100):
        writer.add_exposure(exposure(i, unit="poison") if i in poisoned else exposure(i))
        writer.add_outcome(Outcome(f"r{i}", "accepted", float(i % 2), 200.0 + i))
    assert await writer.flush()
    assert (writer.stats.written, writer.stats.set_aside, writer.pending) == (198, 2, 0)
    assert seen.set_aside == ["exposure", "exposure"] and not seen.dropped
    assert store.count("e", "s") == 98
    letters = store.dead_letters()
    assert [d.event for d in letters] == [exposure(17, unit="poison"), exposure(60, unit="poison")]
    assert all("poison" in d.reason for d in letters), [d.reason for d in letters]

    # The cause fixed, a replay writes them and forgets them.
    assert router_main(["results", "dead-letters", "--results", url]) == 0
    assert "2 dead letters" in capsys.readouterr().out
    _accept_poison(store)
    assert router_main(["results", "dead-letters", "--results", url, "--replay"]) == 0
    assert "replayed 2 of 2" in capsys.readouterr().out
    assert store.count("e", "s") == 100 and store.dead_letters() == []


async def test_the_dead_letters_are_bounded(store: ResultsStore) -> None:
    _refuse_poison(store)
    seen = Observed()
    writer = ResultsWriter(store, 3600, max_buffer=1000, observer=seen, dead_letter_limit=1)
    for i in range(10):
        writer.add_exposure(exposure(i, unit="poison") if i in (3, 4) else exposure(i))
    assert await writer.flush()
    assert (writer.stats.written, writer.stats.set_aside, writer.stats.dropped) == (8, 1, 1)
    assert seen.dropped == ["exposure"] and len(store.dead_letters()) == 1


async def test_odd_ids_that_reach_the_writer_stop_nothing(store: ResultsStore) -> None:
    """Behind the door's check: ids PostgreSQL refuses (too long for the columns, a NUL) are
    set aside there and stored by SQLite; the ordinary events around them are written."""
    writer = ResultsWriter(store, 3600, max_buffer=1000)
    odd = [exposure(1000, request_id="r" * 300), exposure(1001, unit="u" * 400),
           exposure(1002, request_id="a\x00b")]  # fmt: skip
    for e in odd:
        writer.add_exposure(e)
    for i in range(60):
        writer.add_exposure(exposure(i))
        writer.add_outcome(Outcome(f"r{i}", "accepted", 1.0, 100.0))
    assert await writer.flush()
    refused = 3 if store.engine.dialect.name == "postgresql" else 0
    assert writer.stats.written == 123 - refused and writer.stats.set_aside == refused
    assert store.count("e", "s") == 63 - refused
    # A dead letter keeps the event exactly, NUL included.
    assert [d.event for d in store.dead_letters()] == odd[:refused]


async def test_a_reused_request_id_is_counted_and_logged(
    store: ResultsStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(1000.0)
    seen = Observed()
    writer = ResultsWriter(store, 3600, max_buffer=1000, observer=seen, clock=clock)
    writer.add_exposure(exposure(1))
    writer.add_exposure(exposure(2))
    assert await writer.flush()
    with caplog.at_level(logging.WARNING, logger="router.results.writer"):
        writer.add_exposure(exposure(1))  # the same event again (a re-send): not a reuse
        writer.add_exposure(exposure(2, at=50.0, unit="someone-else"))  # another request
        writer.add_exposure(exposure(3))
        writer.add_exposure(exposure(3, at=60.0))  # reused inside one batch
        assert await writer.flush()
        assert seen.reused == 2 and writer.stats.reused == 2
        writer.add_exposure(exposure(2, at=70.0))
        assert await writer.flush()
        clock.advance(REUSED_LOG_EVERY_S)
        writer.add_exposure(exposure(1, at=80.0))
        assert await writer.flush()
    assert seen.reused == 4
    lines = [r.getMessage() for r in caplog.records if "reused by" in r.getMessage()]
    # Rate-limited: the second line comes a minute later and counts what it summarises.
    assert len(lines) == 2, lines
    assert "'r2'" in lines[0] and "'r3'" in lines[0] and "(2 reused since" in lines[0]
    assert "'r1'" in lines[1] and "(2 reused since" in lines[1]
    # Only the first exposure counts; outcomes join it.
    assert store.count("e", "s") == 3


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_odd_ids_are_refused_at_the_door_and_results_keep_flowing(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    postgres = request.getfixturevalue("postgres") if engine == "postgresql" else None
    async with fault_server("a") as (_, a), fault_server("b") as (_, b):
        cfg = base_config({"a": [a], "b": [b]}, tag={"primary": "a", "experiment": {
            "name": "ab", "seed": "p1", "arms": [
                {"name": "control", "model": "a", "weight": 0.5},
                {"name": "candidate", "model": "b", "weight": 0.5}]}})  # fmt: skip
        cfg["outcomes"] = {"accepted": {"kind": "binary"}}
        cfg["results"]["url"] = _url(engine, tmp_path, postgres)
        async with live_router(cfg, tmp_path) as router:
            await router.all_serving()
            for field, value, needle in ODD:
                req = rpb.ProcessRequest(audio=wav(0.1), task=rpb.TASK_TAG, **{field: value})
                for call in (router.stub.Process(req), _streamed(router.stub, req)):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert needle in (info.value.details() or ""), info.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.stub.Process(
                    rpb.ProcessRequest(audio=wav(0.1), task=rpb.TASK_TAG),
                    metadata=(("x-user-id", "x" * 129),),
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "x-user-id metadata is 129 characters" in (info.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.stub.RecordOutcome(
                    rpb.RecordOutcomeRequest(request_id="z" * 200, metric="accepted", value=1)
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "request_id is 200 characters" in (info.value.details() or "")

            for i in range(60):
                answer = await router.process(rpb.TASK_TAG, wav(0.1), user_id=f"user-{i}")
                await router.stub.RecordOutcome(rpb.RecordOutcomeRequest(
                    request_id=answer.request_id, metric="accepted", value=i % 2))  # fmt: skip
            await router.flush()
            results = router.core.results
            assert results is not None
            assert results.store.count("ab", "p1") == 60
            assert results.writer.stats.written == 120 and results.writer.stats.set_aside == 0


async def _streamed(stub: object, req: rpb.ProcessRequest) -> None:
    async for _ in stub.ProcessStream(req):  # type: ignore[attr-defined]
        pass
