"""Results-schema versions on SQLite and a real PostgreSQL: a fresh store is created at this
router's version, an older one is refused until `router results migrate` upgrades it with every
row intact, a newer or damaged one is refused, all from the command line without a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update

from router.cli import main
from router.results.query import phase_statistics, segment_statistics
from router.results.schema import PRE_REQUEST_SUMS, SCHEMA_VERSION, schema_info, unit_requests
from router.results.store import Exposure, Outcome, ResultsStore, SchemaError
from router.server import StartupError
from tests.router.conftest import base_config, live_router
from tests.support.postgres import Postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres.database(f"m{abs(hash(tmp_path)) % 10**9}")


@pytest.fixture
def store(url: str) -> Iterator[ResultsStore]:
    s = ResultsStore(url)
    try:
        yield s
    finally:
        s.close()


def _events() -> tuple[list[Exposure], list[Outcome]]:
    rows = [Exposure(f"r{i}", "e", "s", "ab"[i % 2], "m", f"u{i % 5}", 1.0, 10.0 + i,
                     False, False, False) for i in range(20)]  # fmt: skip
    return rows, [Outcome(f"r{i}", "accepted", float(i % 3 == 0), 2.0) for i in range(20)]


V3_COLUMNS = {"unit_requests": ["first_at", "lookback", *PRE_REQUEST_SUMS],
              "unit_outcomes": ["a", "b"]}  # fmt: skip


def _to_version_1(store: ResultsStore) -> None:
    """The store as a router at schema 1 left it: no dead letters, no exposure dimensions,
    version 1."""
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE results_dead_letters"))
        conn.execute(text("DROP TABLE exposure_dimensions"))
        conn.execute(text("DROP INDEX unit_requests_unit"))
        conn.execute(text("DROP INDEX exposures_unit_at"))
        for table, columns in V3_COLUMNS.items():
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(update(schema_info).values(version=1))


def _cli(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str]:
    code = main(list(words))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_fresh_store_is_created_at_this_version(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, said = _cli(capsys, "results", "migrate", "--results", url)
    assert code == 0 and f"at results schema {SCHEMA_VERSION}" in said, said
    code, said = _cli(capsys, "results", "migrate", "--results", url)
    assert code == 0 and "already" in said, said


def test_an_older_store_is_refused_then_migrated_with_its_rows(
    store: ResultsStore, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store.create()
    store.write(*_events())
    before = phase_statistics(store, "e", "s", ["accepted"])
    _to_version_1(store)

    code, said = _cli(capsys, "report", "--results", url, "--experiment", "e")
    assert code == 3 and "older than this router's" in said, said
    assert "router results migrate --results URL" in said and "Traceback" not in said
    with pytest.raises(SchemaError, match="older"):
        ResultsStore(url).create()

    code, said = _cli(capsys, "results", "migrate", "--results", url)
    assert code == 0 and f"from results schema 1 to {SCHEMA_VERSION}" in said, said
    again = ResultsStore.existing(url)
    assert phase_statistics(again, "e", "s", ["accepted"]) == before
    assert again.dead_letters() == []  # the table schema 2 added
    # Schema 3's: earlier exposures have no segment value; new ones keep theirs.
    again.write([Exposure("new", "e", "s", "a", "m", "u9", 3.0, 1.0, False, False, False,
                          dimensions={"x-client": "web"})], [])  # fmt: skip
    by_value, distinct = segment_statistics(again, "e", "s", "x-client")
    assert distinct == 2 and by_value["(none)"]["a"].requests == 10
    assert by_value["web"]["a"].requests == 1 and "b" not in by_value["web"]
    # Schema 3's rollup columns: each user's first exposure, from the events.
    firsts = again.read(select(unit_requests.c.unit, unit_requests.c.first_at))
    assert sorted(firsts) == sorted([*((f"u{u}", 1.0) for u in range(5) for _ in "ab"),
                                     ("u9", 3.0)])  # fmt: skip
    again.close()
    code, said = _cli(capsys, "report", "--results", url, "--experiment", "e", "--json")
    assert code == 0, said


def test_a_newer_or_damaged_store_is_refused(
    store: ResultsStore, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store.create()
    store.write(*_events())
    with store.engine.begin() as conn:
        conn.execute(update(schema_info).values(version=SCHEMA_VERSION + 1))
    for words in (["report", "--experiment", "e"], ["results", "migrate"]):
        code, said = _cli(capsys, *words, "--results", url)
        assert code == 3 and "newer than this router's" in said, said

    with store.engine.begin() as conn:
        conn.execute(delete(schema_info))
    code, said = _cli(capsys, "report", "--experiment", "e", "--results", url)
    assert code == 3 and "damaged: gamaserving_schema holds no version row" in said, said

    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE gamaserving_schema"))
    for words in (["report", "--experiment", "e"], ["results", "migrate"]):
        code, said = _cli(capsys, *words, "--results", url)
        assert code == 3 and "damaged: results tables (" in said, said
        assert "without gamaserving_schema" in said and "Traceback" not in said


async def test_a_router_refuses_to_start_on_an_older_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    old = ResultsStore(url)
    old.create()
    _to_version_1(old)
    old.close()
    cfg = base_config({"m": ["127.0.0.1:1"]}, tag={"primary": "m"})
    cfg["results"]["url"] = url
    with pytest.raises(StartupError, match=r"older than .* `router results migrate"):
        async with live_router(cfg, tmp_path):
            pass
