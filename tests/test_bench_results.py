"""`benchmarks.results` (in `make bench`) on small sizes: its PostgreSQL fill gives the report
the users and arms it claims (and CUPED their earlier requests), and its ingest loop commits
what it counts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.results import ingest, report_times
from router.results.cuped_query import cuped_sums, cuped_sums_from_events
from router.results.store import ResultsStore
from tests.support.postgres import Postgres

ROOT = Path(__file__).resolve().parents[1]


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
    ((seconds, units, cuped, events),) = report_times(store, (2000,)).values()
    assert units == 2000 // 20 + 1 and seconds > 0 and cuped > 0  # g / 20 over 1..2000
    assert events > 0
    assert store.count("size2000", "s1") == 2000
    # The earlier requests belong to the phase's users: CUPED finds history for every one.
    sums = cuped_sums(store, "size2000", "s1", ["accepted"], 14)
    assert sum(arm["latency_ms"].with_history for arm in sums.values()) == units
    # The rebuilt covariates are the events' own (cuped_sums reads the rollup: every user was
    # summed over the 14 days).
    events = cuped_sums_from_events(store, "size2000", "s1", ["accepted"], 14)
    for arm, by_metric in sums.items():
        for metric, got in by_metric.items():
            assert vars(got) == pytest.approx(vars(events[arm][metric]), rel=1e-9), metric


def test_ingest_commits_what_it_counts(store: ResultsStore) -> None:
    rate = ingest(store, 0.2, batch=100)
    assert rate > 0
    assert store.count("ingest", "s1") % 100 == 0 and store.count("ingest", "s1") >= 100


def test_the_store_only_command_writes_its_section(tmp_path: Path) -> None:
    """`python -m benchmarks.results --store-only`, as docs/benchmarks.md gives it (small)."""
    page = tmp_path / "bench.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.results", "--store-only", "--sizes", "2000",
         "--out", str(page)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "<!-- bench:results-store -->" in text and "PostgreSQL ingest, one replica" in text
    assert "CUPED's sums from the rollup, 2e+03 exposures" in text
    assert "<!-- bench:results -->" not in text  # the request-path section needs the models
