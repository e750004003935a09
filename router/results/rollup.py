"""The per-user rollup (`unit_requests`, `unit_outcomes`), kept current inside each write
transaction: a new exposure adds its request metrics to its user's row, and any outcomes that
came before it; a new outcome adds to its exposure's user, a replaced one adds the difference.
Reports then read one row per user (and outcome metric), whatever the phase's size; `rebuild`
recomputes a phase from the events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Float, and_, case, cast, delete, func, insert, literal, select
from sqlalchemy.sql.elements import ColumnElement

from router.results.covariates import Window, resum
from router.results.dialect import among
from router.results.schema import exposures, outcomes, unit_outcomes, unit_requests

REQUEST_METRICS: dict[str, ColumnElement[Any]] = {
    "latency_ms": exposures.c.latency_ms,
    "error_rate": exposures.c.error,
    "fallback_rate": exposures.c.fallback,
    "quality_failure_rate": exposures.c.quality_failed,
}
"""Metrics every exposure carries, each a value per request (the columns of unit_requests)."""

# Bound parameters per IN list: under SQLite's and PostgreSQL's limits on one statement.
CHUNK = 5000

Phase = tuple[str, str, str, str]
"""(experiment, seed, arm, unit)"""
_PHASE = ("experiment", "seed", "arm", "unit")
_FIELDS = {"latency_ms": "latency_ms", "error_rate": "error", "fallback_rate": "fallback",
           "quality_failure_rate": "quality_failed"}  # fmt: skip


class Deltas:
    """What one batch adds to the rollup."""

    def __init__(self) -> None:
        self.requests: dict[Phase, dict[str, float]] = defaultdict(
            lambda: dict.fromkeys(("requests", *REQUEST_METRICS), 0.0)
        )
        self.outcomes: dict[tuple[Phase, str], list[float]] = defaultdict(lambda: [0.0, 0.0])

    def exposure(self, phase: Phase, row: Mapping[str, Any]) -> None:
        totals = self.requests[phase]
        totals["requests"] += 1.0
        for metric, field in _FIELDS.items():
            totals[metric] += float(row[field])
        # The user's first exposure in the phase, as far as this batch knows.
        at = float(row["at"])
        totals["first_at"] = min(totals.get("first_at", at), at)

    def outcome(self, phase: Phase, metric: str, x: float, y: float) -> None:
        total = self.outcomes[(phase, metric)]
        total[0] += x
        total[1] += y

    def request_rows(self) -> list[dict[str, Any]]:
        return [{**dict(zip(_PHASE, k, strict=True)), **v} for k, v in self.requests.items()]

    def outcome_rows(self) -> list[dict[str, Any]]:
        return [
            {**dict(zip(_PHASE, phase, strict=True)), "metric": metric, "x": x, "y": y}
            for (phase, metric), (x, y) in self.outcomes.items()
        ]


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _phase(row: Any) -> Phase:
    return (row["experiment"], row["seed"], row["arm"], row["unit"])


def new_exposures(conn: Connection, rows: Sequence[Mapping[str, Any]], deltas: Deltas) -> None:
    """Exposures just inserted (re-sent ones excluded by the caller; those outside phases are
    skipped): their request metrics, and the outcomes already stored for them (reported
    before the exposure arrived)."""
    in_phase = {r["request_id"]: r for r in rows if r["experiment"]}
    for r in in_phase.values():
        deltas.exposure(_phase(r), r)
    for ids in _chunks(list(in_phase)):
        earlier = select(outcomes.c.request_id, outcomes.c.metric, outcomes.c.value).where(
            among(conn, outcomes.c.request_id, ids)
        )
        for request_id, metric, value in conn.execute(earlier):
            deltas.outcome(_phase(in_phase[request_id]), metric, float(value), 1.0)


def stored_times(conn: Connection, ids: Sequence[str]) -> dict[str, float]:
    """Which of these exposures the store already holds, and when each was made: the same
    time is the same event sent again (a batch re-sent after a flush whose commit went
    through); another time is another request that reused the id."""
    found: dict[str, float] = {}
    for chunk in _chunks(ids):
        query = select(exposures.c.request_id, exposures.c.at).where(
            among(conn, exposures.c.request_id, chunk)
        )
        found.update((i, at) for i, at in conn.execute(query).tuples())
    return found


def previous_outcomes(
    conn: Connection, rows: Sequence[dict[str, Any]]
) -> dict[tuple[str, str], tuple[float, float]]:
    """(request id, metric) -> (value, at) already stored, before a batch replaces them."""
    ids = sorted({r["request_id"] for r in rows})
    found = {}
    for chunk in _chunks(ids):
        query = select(outcomes.c.request_id, outcomes.c.metric, outcomes.c.value, outcomes.c.at)
        for request_id, metric, value, at in conn.execute(
            query.where(among(conn, outcomes.c.request_id, chunk))
        ):
            found[(request_id, metric)] = (float(value), float(at))
    return found


def reported_exposures(conn: Connection, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stored exposures a batch's outcomes are about, by request id (any experiment or
    none): what the rollup and CUPED's covariates both add the outcomes to."""
    ids = sorted({r["request_id"] for r in rows})
    e = exposures.c
    found: dict[str, Any] = {}
    for chunk in _chunks(ids):
        query = select(e.request_id, e.experiment, e.seed, e.arm, e.unit, e.at).where(
            among(conn, e.request_id, chunk)
        )
        found.update((row.request_id, row) for row in conn.execute(query))
    return found


def new_outcomes(
    rows: Sequence[dict[str, Any]],
    reported: Mapping[str, Any],
    previous: dict[tuple[str, str], tuple[float, float]],
    deltas: Deltas,
) -> None:
    """Outcomes this batch stored (new, or later than the stored one) whose exposure is in a
    phase: add them, or the difference they make. Exposures that come later add them then."""
    phases = {i: (e.experiment, e.seed, e.arm, e.unit) for i, e in reported.items() if e.experiment}
    for r in rows:
        phase = phases.get(r["request_id"])
        prev = previous.get((r["request_id"], r["metric"]))
        if phase is None or (prev is not None and r["at"] < prev[1]):
            continue
        if prev is None:
            deltas.outcome(phase, r["metric"], float(r["value"]), 1.0)
        else:
            deltas.outcome(phase, r["metric"], float(r["value"]) - prev[0], 0.0)


def rebuild(conn: Connection, experiment: str, seed: str, outcome_metrics: Sequence[str],
            lookback: float = 0.0) -> None:  # fmt: skip
    """Recompute a phase's rollup from its events (after loading events in bulk, or to check
    the incremental one); with a CUPED `lookback` (seconds), its users' covariates too."""
    phase = (exposures.c.experiment == experiment, exposures.c.seed == seed)
    for table in (unit_requests, unit_outcomes):
        conn.execute(delete(table).where(table.c.experiment == experiment, table.c.seed == seed))
    keys = (exposures.c.experiment, exposures.c.seed, exposures.c.arm, exposures.c.unit)
    sums: list[ColumnElement[Any]] = [cast(func.count(), Float)]
    for name, column in REQUEST_METRICS.items():
        number = cast(column, Float) if name == "latency_ms" else case((column, 1.0), else_=0.0)
        sums.append(func.sum(number))
    sums.append(func.min(exposures.c.at))
    conn.execute(
        insert(unit_requests).from_select(
            [*_PHASE, "requests", *REQUEST_METRICS, "first_at"],
            select(*keys, *sums).where(*phase).group_by(*keys),
        )
    )
    for metric in outcome_metrics:
        joined = exposures.join(
            outcomes,
            and_(outcomes.c.request_id == exposures.c.request_id, outcomes.c.metric == metric),
        )
        per_unit = (
            select(*keys, literal(metric), func.sum(outcomes.c.value), cast(func.count(), Float))
            .select_from(joined)
            .where(*phase)
            .group_by(*keys)
        )
        conn.execute(insert(unit_outcomes).from_select([*_PHASE, "metric", "x", "y"], per_unit))
    if lookback > 0:
        r = unit_requests.c
        users = select(*(r[k] for k in _PHASE), r.first_at).where(
            r.experiment == experiment, r.seed == seed
        )
        resum(conn, {tuple(row[:4]): Window(float(row[4]), lookback)
                     for row in conn.execute(users)})  # fmt: skip
