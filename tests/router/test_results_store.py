"""The results store on real databases (SQLite from the standard library, PostgreSQL started on
loopback): deduplicated writes, outcomes joined whenever they arrive, statistics per user, a
writer that survives an outage, and a schema that refuses to be misread."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from sqlalchemy import update

from router.experiments.results import ArmResults
from router.experiments.stats import RatioMoments, welch
from router.results.query import phase_statistics, phase_statistics_from_events
from router.results.schema import SCHEMA_VERSION, schema_info
from router.results.store import Exposure, Outcome, ResultsStore, StoreError
from router.results.writer import ResultsWriter
from tests.support.fakes import Observed
from tests.support.postgres import Postgres

_fresh = iter(range(1_000_000))


def exposure(request_id: str, arm: str, unit: str, latency: float = 10.0, **kw: object) -> Exposure:
    fields: dict[str, object] = {
        "experiment": "e",
        "seed": f"s{next(_fresh)}" if kw.pop("fresh_seed", False) else "s1",
        "model": "a" if arm == "control" else "b",
        "at": 1.0,
        "error": False,
        "fallback": False,
        "quality_failed": False,
        **kw,
    }
    return Exposure(request_id=request_id, arm=arm, unit=unit, latency_ms=latency, **fields)  # type: ignore[arg-type]


def test_rows_count_once_and_outcomes_join_whenever_they_come(store: ResultsStore) -> None:
    seed = f"phase-{next(_fresh)}"
    rows = [exposure(f"{seed}-r{i}", "control" if i % 2 else "candidate", f"u{i}", seed=seed)
            for i in range(10)]  # fmt: skip
    early = Outcome(f"{seed}-r1", "accepted", 0.0, 1.0)  # before its exposure is written
    store.write([], [early])
    store.write(rows, [])
    store.write(rows[:4], [])  # a retry re-sends: ignored
    store.write([], [Outcome(f"{seed}-r1", "accepted", 1.0, 2.0)])  # a repeat replaces
    store.write([], [Outcome(f"{seed}-r3", "accepted", 0.0, 2.0),
                     Outcome(f"{seed}-r3", "accepted", 1.0, 3.0)])  # fmt: skip
    arms = phase_statistics(store, "e", seed, ["accepted"])
    assert {a: s.requests for a, s in arms.items()} == {"control": 5, "candidate": 5}
    accepted = arms["control"].metrics["accepted"]
    assert (accepted.y, accepted.x, accepted.mean) == (2.0, 2.0, 1.0)  # r1 and r3, once each
    assert arms["candidate"].metrics["accepted"].y == 0
    assert arms["control"].metrics["latency_ms"].mean == 10.0
    assert store.prune("e", seed) == 10
    assert phase_statistics(store, "e", seed, ["accepted"]) == {}


def test_a_newer_schema_refuses(store: ResultsStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(schema_info).values(version=SCHEMA_VERSION + 1))
    try:
        again = ResultsStore.__new__(ResultsStore)
        again.__dict__.update(store.__dict__)
        again.ready = False
        with pytest.raises(StoreError, match="newer than this router's"):
            again.create()
    finally:
        with store.engine.begin() as conn:
            conn.execute(update(schema_info).values(version=SCHEMA_VERSION))


def test_bad_urls_are_named() -> None:
    for url, needle in [
        ("mysql://x@y/z", "unsupported database 'mysql'"),
        ("sqlite://", "needs a file"),
        ("not a url", "not a database URL"),
    ]:
        with pytest.raises(StoreError, match=needle):
            ResultsStore(url)


def _cluster_variance(values: np.ndarray, groups: np.ndarray) -> float:
    """statsmodels' cluster-robust variance of a mean (intercept-only OLS, no small-sample
    correction): an independent reading of the delta method over units."""
    fit = sm.OLS(values, np.ones_like(values)).fit(
        cov_type="cluster", cov_kwds={"groups": groups, "use_correction": False}
    )
    return float(fit.bse[0] ** 2)


def test_one_heavy_user_counts_as_one_unit_and_intervals_agree_with_statsmodels(
    store: ResultsStore,
) -> None:
    rng = random.Random(7)
    seed = f"heavy-{next(_fresh)}"
    rows, values = [], {"control": [], "candidate": []}  # type: ignore[var-annotated]
    for arm, shift in (("control", 0.0), ("candidate", 5.0)):
        for user in range(40):
            # User 0 of each arm sends 100 times more requests, all slow together.
            n, base = (200, 80.0) if user == 0 else (2, 20.0)
            for k in range(n):
                latency = base + shift + rng.gauss(0, 3)
                rows.append(exposure(f"{seed}-{arm}-{user}-{k}", arm, f"{arm}-u{user}",
                                     latency, seed=seed))  # fmt: skip
                values[arm].append((latency, f"{arm}-u{user}"))
    store.write(rows, [])
    arms = phase_statistics(store, "e", seed)
    for arm in ("control", "candidate"):
        got = arms[arm].metrics["latency_ms"]
        y = np.array([v for v, _ in values[arm]])
        g = np.array([u for _, u in values[arm]])
        assert (arms[arm].units, arms[arm].requests) == (40, 278)
        assert got.mean == pytest.approx(y.mean(), rel=1e-12)
        # Ours (sample variances over units, as gbstats) = CR0 * n / (n - 1).
        assert got.variance / got.n == pytest.approx(
            _cluster_variance(y, g) * got.n / (got.n - 1), rel=1e-9
        )
        naive = y.var(ddof=1) / y.size  # requests as if independent
        assert got.variance / got.n > 5 * naive  # the heavy user's requests move together
    effect = welch(arms["candidate"].metrics["latency_ms"], arms["control"].metrics["latency_ms"])
    half_width = (effect.ci[1] - effect.ci[0]) / 2
    se = math.sqrt(sum(arms[a].metrics["latency_ms"].variance / 40 for a in arms))
    assert half_width == pytest.approx(se * 1.99, rel=0.02)  # t with ~ 2 x 39 units of df


async def test_the_writer_waits_out_an_outage_and_counts_drops(postgres: Postgres) -> None:
    store = ResultsStore(postgres.url)
    store.create()
    seen = Observed()
    writer = ResultsWriter(store, 3600, max_buffer=50, observer=seen)
    seed = f"outage-{next(_fresh)}"
    try:
        postgres.stop()
        for i in range(40):
            writer.add_exposure(exposure(f"{seed}-{i}", "control", f"u{i}", seed=seed))
        assert not await writer.flush()  # down: kept
        assert writer.pending == 40 and writer.stats.failed_flushes == 1
        for i in range(40, 60):
            writer.add_exposure(exposure(f"{seed}-{i}", "control", f"u{i}", seed=seed))
        writer.add_outcome(Outcome(f"{seed}-0", "accepted", 1.0, 2.0))
        assert writer.pending == 50 and writer.stats.dropped == 11
        assert seen.dropped == ["exposure"] * 10 + ["outcome"]
        postgres.start()
        await writer.close()
        assert writer.pending == 0 and writer.stats.written == 50
        assert store.count("e", seed) == 50
    finally:
        store.close()


async def test_close_writes_everything_buffered(tmp_path: Path) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'r.sqlite'}")
    writer = ResultsWriter(store, 3600, max_buffer=10_000)
    writer.start()
    for i in range(300):
        writer.add_exposure(exposure(f"c{i}", "control", f"u{i % 7}"))
    await asyncio.sleep(0)
    await writer.close()
    assert store.count("e", "s1") == 300
    store.close()


def test_the_rollup_equals_the_events_however_they_arrive(store: ResultsStore) -> None:
    """Exposures re-sent, outcomes before and after their exposure, replaced by later reports
    and not by earlier ones, in batches of every size: the per-user rollup the writers keep
    equals what the events give, and a rebuild from the events gives it too."""
    rng = random.Random(11)
    seed = f"rollup-{next(_fresh)}"
    events: list[tuple[str, object]] = []
    for i in range(300):
        arm = "control" if i % 2 else "candidate"
        row = exposure(f"{seed}-{i}", arm, f"u{rng.randrange(40)}", rng.uniform(5, 50), seed=seed,
                       error=rng.random() < 0.1, fallback=rng.random() < 0.2)  # fmt: skip
        events.append(("exposure", row))
        if rng.random() < 0.3:
            events.append(("exposure", row))  # a retry re-sends it
        for metric in ("accepted", "rating"):
            for _ in range(rng.randrange(3)):  # none, one, or a repeat
                value = float(rng.random() < 0.6) if metric == "accepted" else rng.uniform(1, 5)
                events.append(
                    ("outcome", Outcome(row.request_id, metric, value, rng.uniform(0, 9)))
                )
    events.append(("outcome", Outcome("never-exposed", "accepted", 1.0, 1.0)))
    rng.shuffle(events)  # outcomes before their exposures, reports out of order
    i = 0
    while i < len(events):
        size = rng.choice([1, 7, 50, 200])
        batch = events[i : i + size]
        i += size
        store.write(
            [e for kind, e in batch if kind == "exposure"],  # type: ignore[misc]
            [e for kind, e in batch if kind == "outcome"],  # type: ignore[misc]
        )
    metrics = ["accepted", "rating"]
    expected = _flat(phase_statistics_from_events(store, "e", seed, metrics))
    assert _flat(phase_statistics(store, "e", seed, metrics)) == pytest.approx(expected)
    store.rebuild("e", seed, metrics)
    assert _flat(phase_statistics(store, "e", seed, metrics)) == pytest.approx(expected)
    assert sum(v for (arm, what), v in expected.items() if what == "requests") == 300


def _flat(arms: dict[str, ArmResults]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for arm, a in arms.items():
        out[(arm, "units")], out[(arm, "requests")] = a.units, a.requests
        for metric, m in a.metrics.items():
            assert isinstance(m, RatioMoments)
            for field in ("n", "x", "xx", "y", "yy", "xy"):
                out[(arm, f"{metric}.{field}")] = getattr(m, field)
    return out


def test_report_and_prune_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    store = ResultsStore(url)
    seed = f"cli-{next(_fresh)}"
    store.write(
        [exposure(f"{seed}-{i}", "control" if i % 3 else "candidate", f"u{i}", seed=seed)
         for i in range(9)],
        [Outcome(f"{seed}-1", "accepted", 1.0, 1.0), Outcome(f"{seed}-2", "accepted", 0.0, 1.0)],
    )  # fmt: skip
    store.close()
    assert main(["report", "--results", url, "--experiment", "e", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seed"] == seed and out["counts"] == {"control": 6, "candidate": 3}
    assert (
        out["means"]["control"]["accepted"] == 0.5 and out["means"]["candidate"]["accepted"] is None
    )
    # Without --json, tables for a person.
    assert main(["report", "--results", url, "--experiment", "e"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"experiment e, seed {seed}: counts and means only"), text
    assert re.search(r"^control\s+6\s+6\s", text, re.M), text
    assert main(["report", "--results", url, "--experiment", "e", "--seed", "nope"]) == 2
    assert f"no phase with seed 'nope' in sqlite:///{tmp_path}/cli.sqlite; its phases: {seed}" in (
        capsys.readouterr().err
    )
    assert main(["results", "prune", "--results", url, "--experiment", "e", "--seed", seed]) == 0
    assert "deleted 9 exposures of e (seed " in capsys.readouterr().out
    assert main(["report", "--results", url, "--experiment", "e", "--json"]) == 2
    assert "no exposures of experiment 'e'" in capsys.readouterr().err


def test_reading_commands_never_create_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], postgres: Postgres
) -> None:
    from router.cli import main

    missing = tmp_path / "nonexistent.sqlite"
    for words in (["report", "--experiment", "e"], ["results", "prune", "--experiment", "e"],
                  ["results", "dead-letters"]):  # fmt: skip
        assert main([*words, "--results", f"sqlite:///{missing}"]) == 3
        assert f"no results store at {missing}" in capsys.readouterr().err
        assert not missing.exists()
    # A PostgreSQL database no router has written: said so, not "no such table".
    assert main(["report", "--experiment", "e", "--results", postgres.url.rsplit("/", 1)[0]
                 + "/template1"]) == 3  # fmt: skip
    assert "no results store at postgresql" in capsys.readouterr().err
