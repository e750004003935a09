"""A phase's results from the store, in SQL: per unit (the user: what was randomised) first,
then per arm, as sufficient statistics (GrowthBook's fact-metric statistics CTE). Per-request
metrics are ratio metrics over units, so a user with a thousand requests counts as one unit
whose requests move together; outcomes join exposures by request id whenever they arrived.

`phase_statistics` reads the per-unit rollup the writers keep (one row per user and metric);
`phase_statistics_from_events` computes the same from the events themselves, the reference
the rollup is checked against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, literal, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from router.experiments.results import ArmResults
from router.experiments.segments import OTHER, UNSET
from router.experiments.stats import RatioMoments, Statistic
from router.results.rollup import REQUEST_METRICS
from router.results.schema import (
    exposure_dimensions,
    exposures,
    outcomes,
    unit_outcomes,
    unit_requests,
)
from router.results.store import ResultsStore


def as_number(column: ColumnElement[Any]) -> ColumnElement[float]:
    return cast(column, Float)


def phase_statistics(
    store: ResultsStore, experiment: str, seed: str, outcome_metrics: Sequence[str] = ()
) -> dict[str, ArmResults]:
    """Per arm: units, requests, and a RatioMoments for each request metric and each declared
    outcome metric (x: the unit's sum of the metric over its requests that have it; y: how
    many requests have it), from the per-unit rollup."""
    r = unit_requests.c
    per_arm = [func.count(), func.sum(r.requests), func.sum(r.requests * r.requests)]
    for name in REQUEST_METRICS:
        column = r[name]
        per_arm += [func.sum(column), func.sum(column * column), func.sum(column * r.requests)]
    query = (
        select(r.arm, *per_arm).where(r.experiment == experiment, r.seed == seed).group_by(r.arm)
    )
    out: dict[str, ArmResults] = {}
    for arm, units, requests, requests2, *sums in store.read(query):
        y, yy = float(requests or 0.0), float(requests2 or 0.0)
        stats: dict[str, Statistic] = {}
        for i, name in enumerate(REQUEST_METRICS):
            sx, sxx, sxy = (float(v or 0.0) for v in sums[3 * i : 3 * i + 3])
            stats[name] = RatioMoments(int(units), sx, sxx, y, yy, sxy)
        out[str(arm)] = ArmResults(int(units), round(y), stats)
    o = unit_outcomes.c
    query = (
        select(o.arm, o.metric)
        .add_columns(
            func.sum(o.x), func.sum(o.x * o.x), func.sum(o.y), func.sum(o.y * o.y),
            func.sum(o.x * o.y),
        )
        .where(o.experiment == experiment, o.seed == seed, o.metric.in_(list(outcome_metrics)))
        .group_by(o.arm, o.metric)
    )  # fmt: skip
    found = {(str(arm), str(metric)): values for arm, metric, *values in store.read(query)}
    for arm, results in out.items():
        for metric in outcome_metrics:
            # A user without a report on this metric adds zero to every sum.
            values = found.get((arm, metric), [0.0] * 5)
            ox, oxx, oy, oyy, oxy = (float(v or 0.0) for v in values)
            results.metrics[metric] = RatioMoments(results.units, ox, oxx, oy, oyy, oxy)
    return out


Values = dict[str, tuple[ColumnElement[float], ColumnElement[float]]]
"""Per metric, a request's value (x) and whether it has one (y: 1 or 0)."""


def request_values(
    e: FromClause, outcome_metrics: Sequence[str], tag: str, table: FromClause | None = None
) -> tuple[FromClause, Values]:
    """The exposures `e` (the table or an alias of it, or `table` joined to more) joined to
    each outcome metric's reports, and each metric's per-request value and presence; `tag`
    names the outcome aliases."""
    joined: FromClause = e
    e = table if table is not None else e
    values: Values = {}
    for name, column in REQUEST_METRICS.items():
        column = e.c[column.name]
        # PostgreSQL casts no boolean to a number: a CASE does it on every engine.
        number = case((column, 1.0), else_=0.0) if name != "latency_ms" else as_number(column)
        values[name] = (number, literal(1.0))
    for i, metric in enumerate(outcome_metrics):
        o = outcomes.alias(f"{tag}{i}")
        joined = joined.outerjoin(o, and_(o.c.request_id == e.c.request_id, o.c.metric == metric))
        present = case((o.c.value.is_(None), 0.0), else_=1.0)
        values[metric] = (func.coalesce(o.c.value, 0.0), present)
    return joined, values


def phase_statistics_from_events(
    store: ResultsStore,
    experiment: str,
    seed: str,
    outcome_metrics: Sequence[str] = (),
    until: float | None = None,
) -> dict[str, ArmResults]:
    """`phase_statistics` computed from every exposure and outcome of the phase; with
    `until`, from the exposures up to that time only (the phase as it stood then)."""
    where = [] if until is None else [exposures.c.at <= until]
    found = _from_events(store, experiment, seed, outcome_metrics, where)
    return {arm: results for (arm, _), results in found.items()}


def segment_statistics(
    store: ResultsStore,
    experiment: str,
    seed: str,
    dimension: str,
    outcome_metrics: Sequence[str] = (),
    top: int = 20,
) -> tuple[dict[str, dict[str, ArmResults]], int]:
    """Per value of `dimension` (the `top` values with most exposures; the rest pooled as
    `other`, exposures without it as `(none)`): per arm, the phase's statistics over the
    requests in that segment (each user's requests in it are their unit's). Also returns
    how many distinct values the phase holds."""
    d = exposure_dimensions.alias("segment")
    joined = exposures.outerjoin(
        d, and_(d.c.request_id == exposures.c.request_id, d.c.name == dimension)
    )
    value = func.coalesce(d.c.value, UNSET)
    phase = [exposures.c.experiment == experiment, exposures.c.seed == seed]
    ranked = (
        select(value, func.count()).select_from(joined).where(*phase).group_by(value)
        .order_by(func.count().desc(), value).limit(top)
    )  # fmt: skip
    kept = [str(row[0]) for row in store.read(ranked)]
    distinct = select(func.count(func.distinct(value))).select_from(joined).where(*phase)
    values = int(store.read(distinct)[0][0])
    bucket = case((value.in_(kept), value), else_=literal(OTHER)) if kept else value
    found = _from_events(store, experiment, seed, outcome_metrics, [], (joined, bucket))
    out: dict[str, dict[str, ArmResults]] = {v: {} for v in kept}
    for (arm, segment), results in found.items():
        out.setdefault(segment, {})[arm] = results
    return out, values


def _from_events(
    store: ResultsStore,
    experiment: str,
    seed: str,
    outcome_metrics: Sequence[str],
    where: Sequence[ColumnElement[bool]],
    segment: tuple[FromClause, ColumnElement[str]] | None = None,
) -> dict[tuple[str, str], ArmResults]:
    """Per (arm, segment value; "" without a segment): units, requests and the metrics'
    RatioMoments, from the events: per unit first, then per arm."""
    base = exposures if segment is None else segment[0]
    joined, values = request_values(base, outcome_metrics, "o", exposures)
    by = literal("") if segment is None else segment[1]
    per_unit = (
        select(
            exposures.c.arm.label("arm"),
            by.label("segment"),
            func.count().label("n"),
            *(func.sum(x).label(f"x{i}") for i, (x, _) in enumerate(values.values())),
            *(func.sum(y).label(f"y{i}") for i, (_, y) in enumerate(values.values())),
        )
        .select_from(joined)
        .where(exposures.c.experiment == experiment, exposures.c.seed == seed, *where)
        .group_by(exposures.c.arm, *([] if segment is None else [by]), exposures.c.unit)
        .subquery("per_unit")
    )
    u = per_unit.c
    sums = []
    for i in range(len(values)):
        ux, uy = as_number(u[f"x{i}"]), as_number(u[f"y{i}"])
        sums += [
            func.sum(ux),
            func.sum(ux * ux),
            func.sum(uy),
            func.sum(uy * uy),
            func.sum(ux * uy),
        ]
    query = select(u.arm, u.segment, func.count(), func.sum(u.n), *sums).group_by(u.arm, u.segment)
    out = {}
    for arm, seg, units, requests, *rest in store.read(query):
        metrics: dict[str, Statistic] = {}
        for i, name in enumerate(values):
            x, xx, y, yy, xy = (float(v or 0.0) for v in rest[5 * i : 5 * i + 5])
            metrics[name] = RatioMoments(int(units), x, xx, y, yy, xy)
        out[(str(arm), str(seg))] = ArmResults(int(units), int(requests), metrics)
    return out


def phase_span(store: ResultsStore, experiment: str, seed: str) -> tuple[float, float] | None:
    """The times of the phase's first and last exposures; None before any."""
    e = exposures.c
    query = select(func.min(e.at), func.max(e.at)).where(e.experiment == experiment,
                                                        e.seed == seed)  # fmt: skip
    rows = store.read(query)
    first, last = rows[0] if rows else (None, None)
    if first is None or last is None:
        return None
    return float(first), float(last)


def phases(store: ResultsStore, experiment: str) -> list[str]:
    """The experiment's seeds with exposures, the most recently exposed first."""
    query = (
        select(exposures.c.seed)
        .where(exposures.c.experiment == experiment)
        .group_by(exposures.c.seed)
        .order_by(func.max(exposures.c.at).desc())
    )
    return [str(row[0]) for row in store.read(query)]


def outcome_trends(
    store: ResultsStore, since: float, bucket_seconds: float, model: str = ""
) -> dict[tuple[str, str], list[tuple[float, float, int]]]:
    """Per (model, outcome metric): (bucket start, mean value, reports) for the answers given
    since `since`, bucketed by when the answer was given: quality over time from what callers
    reported, for every routed request, in an experiment or not."""
    bucket = func.floor(exposures.c.at / bucket_seconds)
    where = [exposures.c.at >= since, exposures.c.model != ""]
    if model:
        where.append(exposures.c.model == model)
    query = (
        select(
            exposures.c.model, outcomes.c.metric, bucket, func.avg(outcomes.c.value), func.count()
        )
        .select_from(exposures.join(outcomes, outcomes.c.request_id == exposures.c.request_id))
        .where(*where)
        .group_by(exposures.c.model, outcomes.c.metric, bucket)
        .order_by(exposures.c.model, outcomes.c.metric, bucket)
    )
    out: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for name, metric, index, mean, count in store.read(query):
        out.setdefault((str(name), str(metric)), []).append(
            (float(index) * bucket_seconds, float(mean), int(count))
        )
    return out


def outcome_metrics(store: ResultsStore, experiment: str, seed: str) -> list[str]:
    """The outcome metrics reported for the phase's requests (a row holding only a user's
    CUPED covariate, reports before the phase, does not count)."""
    o = unit_outcomes.c
    query = (
        select(o.metric)
        .where(o.experiment == experiment, o.seed == seed)
        .group_by(o.metric)
        .having(func.sum(o.y) > 0)
        .order_by(o.metric)
    )
    return [str(row[0]) for row in store.read(query)]
