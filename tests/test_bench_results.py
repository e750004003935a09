"""`benchmarks.results` (in `make bench`) on small sizes: its PostgreSQL fill gives the report
the users and arms it claims (and CUPED their earlier requests), and its ingest loop commits
what it counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.results import ingest, report_times
from router.results.cuped_query import cuped_sums
from router.results.store import ResultsStore
from tests.support.postgres import Postgres


@pytest.fixture(scope="module")
def store() -> Iterator[ResultsStore]:
    server = Postgres()
    s = ResultsStore(server.url)
    s.create()
    try:
        yield s
    finally:
        s.close()
        server.close()


def test_the_fill_gives_the_report_its_users(store: ResultsStore) -> None:
    ((seconds, units, cuped),) = report_times(store, (2000,)).values()
    assert units == 2000 // 20 + 1 and seconds > 0 and cuped > 0  # g / 20 over 1..2000
    assert store.count("size2000", "s1") == 2000
    # The earlier requests belong to the phase's users: CUPED finds history for every one.
    sums = cuped_sums(store, "size2000", "s1", ["accepted"], 14)
    assert sum(arm["latency_ms"].with_history for arm in sums.values()) == units


def test_ingest_commits_what_it_counts(store: ResultsStore) -> None:
    rate = ingest(store, 0.2, batch=100)
    assert rate > 0
    assert store.count("ingest", "s1") % 100 == 0 and store.count("ingest", "s1") >= 100
