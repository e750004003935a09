"""A phase's results from the store, in SQL: per unit (the user: what was randomised) first,
then per arm, as sufficient statistics (GrowthBook's fact-metric statistics CTE). Per-request
metrics are ratio metrics over units, so a user with a thousand requests counts as one unit
whose requests move together; outcomes join exposures by request id whenever they arrived."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Float, and_, case, cast, func, literal, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from router.experiments.stats import RatioMoments
from router.results.schema import exposures, outcomes
from router.results.store import ResultsStore

REQUEST_METRICS = {
    "latency_ms": exposures.c.latency_ms,
    "error_rate": exposures.c.error,
    "fallback_rate": exposures.c.fallback,
    "quality_failure_rate": exposures.c.quality_failed,
}
"""Metrics every exposure carries, each a value per request."""


@dataclass(frozen=True)
class ArmStatistics:
    units: int
    requests: int
    metrics: dict[str, RatioMoments] = field(default_factory=dict)


def _number(column: ColumnElement[object]) -> ColumnElement[float]:
    return cast(column, Float)


def phase_statistics(
    store: ResultsStore, experiment: str, seed: str, outcome_metrics: Sequence[str] = ()
) -> dict[str, ArmStatistics]:
    """Per arm: units, requests, and a RatioMoments for each request metric and each declared
    outcome metric (x: the unit's sum of the metric over its requests that have it; y: how
    many requests have it)."""
    joined: FromClause = exposures
    values: dict[str, tuple[ColumnElement[float], ColumnElement[float]]] = {}
    for name, column in REQUEST_METRICS.items():
        # PostgreSQL casts no boolean to a number: a CASE does it on every engine.
        number = case((column, 1.0), else_=0.0) if name != "latency_ms" else _number(column)
        values[name] = (number, literal(1.0))
    for i, metric in enumerate(outcome_metrics):
        o = outcomes.alias(f"o{i}")
        joined = joined.outerjoin(
            o, and_(o.c.request_id == exposures.c.request_id, o.c.metric == metric)
        )
        present = case((o.c.value.is_(None), 0.0), else_=1.0)
        values[metric] = (func.coalesce(o.c.value, 0.0), present)
    per_unit = (
        select(
            exposures.c.arm.label("arm"),
            func.count().label("n"),
            *(func.sum(x).label(f"x{i}") for i, (x, _) in enumerate(values.values())),
            *(func.sum(y).label(f"y{i}") for i, (_, y) in enumerate(values.values())),
        )
        .select_from(joined)
        .where(exposures.c.experiment == experiment, exposures.c.seed == seed)
        .group_by(exposures.c.arm, exposures.c.unit)
        .subquery("per_unit")
    )
    u = per_unit.c
    sums = []
    for i in range(len(values)):
        ux, uy = _number(u[f"x{i}"]), _number(u[f"y{i}"])
        sums += [
            func.sum(ux),
            func.sum(ux * ux),
            func.sum(uy),
            func.sum(uy * uy),
            func.sum(ux * uy),
        ]
    query = select(u.arm, func.count(), func.sum(u.n), *sums).group_by(u.arm)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = {}
    for arm, units, requests, *rest in rows:
        metrics = {}
        for i, name in enumerate(values):
            x, xx, y, yy, xy = (float(v or 0.0) for v in rest[5 * i : 5 * i + 5])
            metrics[name] = RatioMoments(int(units), x, xx, y, yy, xy)
        out[str(arm)] = ArmStatistics(int(units), int(requests), metrics)
    return out
