"""CUPED's sums from the store, in SQL: per user of the phase, the metric's sum and count in
the phase (x, y) and over their requests before their first exposure in it, within the
lookback, in any model or experiment (a, b); then per arm the sums of those and of their
products (router/experiments/cuped.py computes the adjustment from them). Users with no
earlier request join as zeros."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.sql.elements import ColumnElement

from router.config import ExperimentSettings
from router.experiments.cuped import CupedSums, adjust, pooled
from router.experiments.results import ArmResults
from router.experiments.stats import Statistic
from router.results.covariates import DAY
from router.results.query import as_number, phase_statistics, request_values
from router.results.rollup import REQUEST_METRICS
from router.results.schema import exposures, unit_outcomes, unit_requests
from router.results.store import ResultsStore


def cuped_sums(
    store: ResultsStore,
    experiment: str,
    seed: str,
    outcome_metrics: Sequence[str],
    lookback_days: float,
) -> dict[str, dict[str, CupedSums]]:
    """Per arm, per metric (every request metric, then each outcome metric): from the
    covariates the writers keep in the rollup (router/results/covariates.py), one row per
    user, when every user of the phase was summed over this lookback; else from the events."""
    r = unit_requests.c
    other = select(func.count()).where(
        r.experiment == experiment, r.seed == seed, r.lookback != lookback_days * DAY
    )
    if int(store.read(other)[0][0]):
        return cuped_sums_from_events(store, experiment, seed, outcome_metrics, lookback_days)
    out: dict[str, dict[str, CupedSums]] = {}
    users: dict[str, int] = {}
    columns = [(r[m], r.requests, r[f"pre_{m}"], r.pre_requests) for m in REQUEST_METRICS]
    query = select(r.arm, func.count(), *(s for c in columns for s in _products(*c)))
    for arm, n, *rest in store.read(
        query.where(r.experiment == experiment, r.seed == seed).group_by(r.arm)
    ):
        users[str(arm)] = int(n)
        out[str(arm)] = {name: _sums(int(n), rest, i) for i, name in enumerate(REQUEST_METRICS)}
    o = unit_outcomes.c
    for metric in outcome_metrics:
        query = select(o.arm, *_products(o.x, o.y, o.a, o.b)).where(
            o.experiment == experiment, o.seed == seed, o.metric == metric
        )
        found = {str(arm): rest for arm, *rest in store.read(query.group_by(o.arm))}
        for arm, by_metric in out.items():
            # A user without a row for this metric adds zero to every sum.
            by_metric[metric] = _sums(users[arm], found.get(arm, [0.0] * _PER_METRIC), 0)
    return out


_PER_METRIC = 15


def _products(
    x: ColumnElement[float], y: ColumnElement[float], a: ColumnElement[float],
    b: ColumnElement[float],
) -> list[ColumnElement[float]]:  # fmt: skip
    """Per arm, the sums CupedSums holds, over users' x, y (in the phase), a, b (before)."""
    x, y, a, b = (as_number(v) for v in (x, y, a, b))
    products = (x, x * x, y, y * y, x * y, a, a * a, b, b * b, a * b,
                x * a, x * b, y * a, y * b)  # fmt: skip
    return [*(func.sum(v) for v in products), func.sum(case((b > 0, 1.0), else_=0.0))]


def _sums(n: int, row: Sequence[Any], i: int) -> CupedSums:
    chunk = [float(v or 0.0) for v in row[_PER_METRIC * i : _PER_METRIC * (i + 1)]]
    x, xx, y, yy, xy, a, aa, b, bb, ab, xa, xb, ya, yb, history = chunk
    return CupedSums(n, x, xx, y, yy, xy, a, aa, b, bb, ab, xa, xb, ya, yb, round(history))


def cuped_sums_from_events(
    store: ResultsStore,
    experiment: str,
    seed: str,
    outcome_metrics: Sequence[str],
    lookback_days: float,
) -> dict[str, dict[str, CupedSums]]:
    """`cuped_sums` from the events themselves: the reference the rollup is checked against,
    and what a phase whose users were summed over another lookback reads."""
    e = exposures.c
    in_phase = and_(e.experiment == experiment, e.seed == seed)
    first = (
        select(e.arm.label("arm"), e.unit.label("unit"), func.min(e.at).label("t0"))
        .where(in_phase)
        .group_by(e.arm, e.unit)
        .subquery("first")
    )
    joined, values = request_values(exposures, outcome_metrics, "o")
    post = (
        select(e.arm.label("arm"), e.unit.label("unit"),
               *(func.sum(x).label(f"x{i}") for i, (x, _) in enumerate(values.values())),
               *(func.sum(y).label(f"y{i}") for i, (_, y) in enumerate(values.values())))
        .select_from(joined).where(in_phase).group_by(e.arm, e.unit).subquery("post")
    )  # fmt: skip
    earlier = exposures.alias("earlier")
    before, old = request_values(earlier, outcome_metrics, "p")
    f = first.c
    pre = (
        select(f.arm.label("arm"), f.unit.label("unit"),
               *(func.sum(x).label(f"a{i}") for i, (x, _) in enumerate(old.values())),
               *(func.sum(y).label(f"b{i}") for i, (_, y) in enumerate(old.values())))
        .select_from(before.join(first, and_(
            earlier.c.unit == f.unit,
            earlier.c.at < f.t0,
            earlier.c.at >= f.t0 - lookback_days * DAY,
        )))
        .group_by(f.arm, f.unit)
        .subquery("pre")
    )  # fmt: skip
    p, q = post.c, pre.c
    units = post.outerjoin(pre, and_(p.arm == q.arm, p.unit == q.unit))
    sums: list[ColumnElement[float]] = []
    for i in range(len(values)):
        qa, qb = (func.coalesce(q[f"{k}{i}"], 0.0) for k in ("a", "b"))
        sums += _products(p[f"x{i}"], p[f"y{i}"], qa, qb)
    query = select(p.arm, func.count(), *sums).select_from(units).group_by(p.arm)
    return {str(arm): {name: _sums(int(n), rest, i) for i, name in enumerate(values)}
            for arm, n, *rest in store.read(query)}  # fmt: skip


def phase_arms(
    store: ResultsStore, settings: ExperimentSettings, seed: str, outcome_metrics: Sequence[str]
) -> dict[str, ArmResults]:
    """What every verdict reads (the report, the admin RPC, the rollout controller): the
    phase's per-arm statistics, adjusted by CUPED when the experiment asks for it. An adjusted
    metric keeps its unadjusted statistic (`Adjusted.unadjusted`) for the report."""
    arms = phase_statistics(store, settings.name, seed, outcome_metrics)
    if settings.cuped is None or not arms:
        return arms
    sums = cuped_sums(store, settings.name, seed, outcome_metrics, settings.cuped.lookback_days)
    adjusted: dict[str, ArmResults] = {}
    for arm, results in arms.items():
        metrics: dict[str, Statistic] = dict(results.metrics)
        for metric in metrics:
            if metric in sums.get(arm, {}):
                slope, centre = pooled([by_metric[metric] for by_metric in sums.values()])
                metrics[metric] = adjust(sums[arm][metric], slope, centre)
        adjusted[arm] = ArmResults(results.units, results.requests, metrics)
    return adjusted
