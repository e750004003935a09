"""CUPED's sums from the store, in SQL: per user of the phase, the metric's sum and count in
the phase (x, y) and over their requests before their first exposure in it, within the
lookback, in any model or experiment (a, b); then per arm the sums of those and of their
products (router/experiments/cuped.py computes the adjustment from them). Users with no
earlier request join as zeros."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, case, func, select
from sqlalchemy.sql.elements import ColumnElement

from router.config import ExperimentSettings
from router.experiments.cuped import CupedSums, adjust, pooled
from router.experiments.results import ArmResults
from router.experiments.stats import Statistic
from router.results.query import as_number, phase_statistics, request_values
from router.results.schema import exposures
from router.results.store import ResultsStore

DAY = 86_400.0


def cuped_sums(
    store: ResultsStore,
    experiment: str,
    seed: str,
    outcome_metrics: Sequence[str],
    lookback_days: float,
) -> dict[str, dict[str, CupedSums]]:
    """Per arm, per metric (every request metric, then each outcome metric)."""
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
        px, py = as_number(p[f"x{i}"]), as_number(p[f"y{i}"])
        qa, qb = (as_number(func.coalesce(q[f"{k}{i}"], 0.0)) for k in ("a", "b"))
        products = (px, px * px, py, py * py, px * py, qa, qa * qa, qb, qb * qb, qa * qb,
                    px * qa, px * qb, py * qa, py * qb)  # fmt: skip
        sums += [func.sum(v) for v in products]
        sums.append(func.sum(case((qb > 0, 1.0), else_=0.0)))
    query = select(p.arm, func.count(), *sums).select_from(units).group_by(p.arm)
    out: dict[str, dict[str, CupedSums]] = {}
    per_metric = 15
    for arm, n, *rest in store.read(query):
        out[str(arm)] = {}
        for i, name in enumerate(values):
            chunk = [float(v or 0.0) for v in rest[per_metric * i : per_metric * (i + 1)]]
            x, xx, y, yy, xy, a, aa, b, bb, ab, xa, xb, ya, yb, history = chunk
            out[str(arm)][name] = CupedSums(int(n), x, xx, y, yy, xy, a, aa, b, bb, ab,
                                            xa, xb, ya, yb, round(history))  # fmt: skip
    return out


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
