"""CUPED (router/experiments/cuped.py, router/results/cuped_query.py): against GrowthBook's own
engine (gbstats 0.8.0) where the ratio is a mean, against an independent per-user
linearisation in numpy where users make many requests, the store's SQL (SQLite and
PostgreSQL) against sums computed from the same events in Python, and the report that
carries both adjusted and unadjusted comparisons."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import (
    RegressionAdjustedStatistic,
    SampleMeanStatistic,
    compute_theta,
)
from sqlalchemy import func, select

from router.cli import main
from router.experiments.cuped import Adjusted, CupedSums, adjust, pooled, variance_reduction
from router.experiments.stats import confidence_sequence, welch
from router.results.cuped_query import DAY, cuped_sums, cuped_sums_from_events
from router.results.query import outcome_metrics
from router.results.schema import unit_requests
from router.results.store import Exposure, Outcome, ResultsStore
from tests.router.test_outcomes import _config


def _sums(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> CupedSums:
    return CupedSums.of(x, y, a, b)


def _arm(rng: np.random.Generator, n: int, effect: float, many: bool) -> tuple[np.ndarray, ...]:
    """Users whose earlier and later values correlate (about 0.7)."""
    own = rng.normal(10, 3, n)
    b = rng.poisson(3, n).astype(float) if many else np.ones(n)
    y = 1 + rng.poisson(2, n).astype(float) if many else np.ones(n)
    a = b * own + np.sqrt(b) * rng.normal(0, 2, n)
    x = y * (own + effect) + np.sqrt(y) * rng.normal(0, 2, n)
    return x, y, a, b


def test_one_request_per_user_is_gbstats_regression_adjustment() -> None:
    rng = np.random.default_rng(11)
    control, treatment = _arm(rng, 800, 0.0, False), _arm(rng, 900, 0.4, False)
    c, t = _sums(*control), _sums(*treatment)
    slope, centre = pooled([c, t])
    ours_t, ours_c = adjust(t, slope, centre), adjust(c, slope, centre)

    def gb(arm: tuple[np.ndarray, ...]) -> RegressionAdjustedStatistic:
        x, _, a, _ = arm
        return RegressionAdjustedStatistic(
            n=len(x),
            post_statistic=SampleMeanStatistic(n=len(x), sum=x.sum(), sum_squares=(x * x).sum()),
            pre_statistic=SampleMeanStatistic(n=len(a), sum=a.sum(), sum_squares=(a * a).sum()),
            post_pre_sum_of_products=(x * a).sum(),
            theta=0,
        )

    gc, gt = gb(control), gb(treatment)
    gb_theta = compute_theta(gc, gt)
    assert slope == pytest.approx(gb_theta, rel=1e-9)
    gc.theta = gt.theta = gb_theta
    for ours, theirs in ((ours_c, gc), (ours_t, gt)):
        # gbstats' adjusted mean is M - theta P; ours is centred on the pooled P.
        assert ours.mean == pytest.approx(theirs.mean + gb_theta * centre, rel=1e-9)
        assert ours.variance == pytest.approx(theirs.variance, rel=1e-9)
    absolute = FrequentistConfig(difference_type="absolute", alpha=0.05)
    fixed = TwoSidedTTest(gc, gt, absolute).compute_result()
    effect = welch(ours_t, ours_c, 0.05)
    assert effect.difference == pytest.approx(fixed.expected, rel=1e-9)
    assert effect.ci == pytest.approx(tuple(fixed.ci), rel=1e-9)
    assert effect.p_value == pytest.approx(fixed.p_value, rel=1e-6, abs=1e-12)
    sequential = SequentialConfig(difference_type="absolute", alpha=0.05,
                                  sequential_tuning_parameter=5000)  # fmt: skip
    always = SequentialTwoSidedTTest(gc, gt, sequential).compute_result()
    ours_cs = confidence_sequence(ours_t, ours_c, 0.05, tuned_for=5000)
    assert ours_cs == pytest.approx(tuple(always.ci), rel=1e-9)
    assert variance_reduction(ours_t, ours_c) > 0.3  # correlated users: a real reduction


def test_many_requests_per_user_match_a_per_user_linearisation() -> None:
    rng = np.random.default_rng(12)
    control, treatment = _arm(rng, 700, 0.0, True), _arm(rng, 650, -0.3, True)
    assert (control[3] == 0).any()  # some users have no earlier request
    c, t = _sums(*control), _sums(*treatment)
    slope, centre = pooled([c, t])

    def linearised(arm: tuple[np.ndarray, ...], m: float, p: float, ybar: float, bbar: float
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        x, y, a, b = arm
        return (x - m * y) / ybar, (a - p * b) / bbar

    # theta: the per-user values linearised at the pooled ratios, then an OLS slope.
    both = tuple(np.concatenate([u, v]) for u, v in zip(control, treatment, strict=True))
    x, y, a, b = both
    a_all, b_all = a.sum(), b.sum()
    lp, kp = linearised(both, x.sum() / y.sum(), a_all / b_all, y.mean(), b.mean())
    assert slope == pytest.approx(np.cov(lp, kp)[0, 1] / np.var(kp, ddof=1), rel=1e-9)
    for arm, ours in ((control, adjust(c, slope, centre)), (treatment, adjust(t, slope, centre))):
        x, y, a, b = arm
        m, p = x.sum() / y.sum(), a.sum() / b.sum()
        lin, cov = linearised(arm, m, p, y.mean(), b.mean())
        assert (cov[b == 0] == 0).all()  # no earlier request: a zero covariate
        assert ours.mean == pytest.approx(m - slope * (p - a_all / b_all), rel=1e-9)
        assert ours.variance == pytest.approx(np.var(lin - slope * cov, ddof=1), rel=1e-9)
        assert ours.unadjusted.variance == pytest.approx(np.var(lin, ddof=1), rel=1e-9)


# -- the store's SQL -------------------------------------------------------------------------


T0 = 1_765_000_000.0


def _history(rng: random.Random, users: int, phase: str) -> tuple[list[Exposure], list[Outcome]]:
    """Each user: requests before the phase (some outside the lookback, some in another
    experiment or none), then the phase's, then later ones elsewhere (which must not count)."""
    rows, reports = [], []
    for u in range(users):
        arm = "control" if u % 2 else "candidate"
        first = T0 + 60 * u
        plan = [(first - 20 * DAY, "", ""), (first - 3 * DAY, "other", "o1"),
                (first - 3600, "", ""), (first + 10, "", "")]  # fmt: skip
        plan = [p for i, p in enumerate(plan) if (u + i) % 3]  # not everyone has each
        plan += [(first + k, "ab", phase) for k in range(1 + u % 3)]
        for k, (at, experiment, seed) in enumerate(plan):
            rid = f"{phase}-u{u}-{k}"
            in_phase = experiment == "ab"
            lookback = 14 * DAY if in_phase else 0.0
            rows.append(Exposure(rid, experiment, seed, arm if in_phase else "", "m",
                                 f"{phase}-u{u}",
                                 at, 50 + rng.random() * 50, rng.random() < 0.1, False,
                                 False, cuped_lookback_s=lookback))  # fmt: skip
            if rng.random() < 0.7:
                reports.append(Outcome(rid, "accepted", float(rng.random() < 0.6), at + 1))
            if rng.random() < 0.2:  # a correction, made later: it replaces the first report
                reports.append(Outcome(rid, "accepted", float(rng.random() < 0.5), at + 2))
    return rows, reports


def _batches(rng: random.Random, rows: list[Exposure], reports: list[Outcome]
             ) -> list[tuple[list[Exposure], list[Outcome]]]:  # fmt: skip
    """The events as replicas' writers may deliver them: in small batches, out of order (a
    user's earlier request after their first exposure, an outcome before its exposure or
    long after it), each report's correction after the report."""
    events: list[Exposure | Outcome] = [*rows, *reports]
    rng.shuffle(events)
    # A correction lands after the report it replaces: a request's reports keep their places
    # in the shuffle, in the order they were made.
    places: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        if isinstance(e, Outcome):
            places.setdefault(e.request_id, []).append(i)
    for at in places.values():
        for i, e in zip(at, sorted((events[i] for i in at), key=lambda o: o.at), strict=True):
            events[i] = e
    out = []
    for i in range(0, len(events), 7):
        part = events[i : i + 7]
        out.append(([e for e in part if isinstance(e, Exposure)],
                    [e for e in part if isinstance(e, Outcome)]))  # fmt: skip
    return out


def _per_unit(metric: str, rs: list[Exposure], value: dict[str, Outcome]) -> tuple[float, float]:
    """One user's sum and count of `metric` over the requests `rs`, from the events."""
    if metric == "accepted":
        have = [value[r.request_id].value for r in rs if r.request_id in value]
        return float(sum(have)), float(len(have))
    field = "latency_ms" if metric == "latency_ms" else "error"
    return float(sum(float(getattr(r, field)) for r in rs)), float(len(rs))


@pytest.mark.parametrize("delivery", ["one batch", "out of order"])
def test_the_store_s_sums_are_the_events_own(store: ResultsStore, delivery: str) -> None:
    """From the covariates the writers keep (router/results/covariates.py) and from the
    events (cuped_sums_from_events), both equal to the sums computed here from the events,
    however the events arrive."""
    rng = random.Random(4)
    # Its own phase and users: the PostgreSQL database is shared by the session's tests (the
    # same ids again would be re-sent events, ignored).
    phase = f"p{rng.random()}-{delivery}"
    rows, reports = _history(rng, 60, phase)
    if delivery == "one batch":
        store.write(rows, reports)
    else:
        for exposures_part, reports_part in _batches(rng, rows, reports):
            store.write(exposures_part, reports_part)
    stale = (
        select(func.count())
        .select_from(unit_requests)
        .where(unit_requests.c.seed == phase, unit_requests.c.lookback != 14 * DAY)
    )
    assert store.read(stale)[0][0] == 0  # every user's covariate summed: the rollup is read
    from_rollup = cuped_sums(store, "ab", phase, ["accepted"], lookback_days=14)
    from_events = cuped_sums_from_events(store, "ab", phase, ["accepted"], lookback_days=14)
    # The latest report of each request counts.
    value = {}
    for r in sorted(reports, key=lambda o: o.at):
        value[r.request_id] = r
    for got in (from_rollup, from_events):
        _check(got, rows, value)


def _check(got: dict[str, dict[str, CupedSums]], rows: list[Exposure],
           value: dict[str, Outcome]) -> None:  # fmt: skip
    for arm in ("control", "candidate"):
        mine = [r for r in rows if r.experiment == "ab" and r.arm == arm]
        units = sorted({r.unit for r in mine})
        first = {u: min(r.at for r in mine if r.unit == u) for u in units}
        for metric in ("latency_ms", "error_rate", "accepted"):
            post = [_per_unit(metric, [r for r in mine if r.unit == u], value) for u in units]
            pre = [_per_unit(metric, [r for r in rows if r.unit == u
                                      and first[u] - 14 * DAY <= r.at < first[u]], value)
                   for u in units]  # fmt: skip
            columns = (*zip(*post, strict=True), *zip(*pre, strict=True))
            want = _sums(*(np.array(v) for v in columns))
            have = got[arm][metric]
            assert have.n == want.n and have.with_history == want.with_history, metric
            for field in ("x", "xx", "y", "a", "aa", "b", "bb", "ab", "xa", "xb", "ya", "yb"):
                assert getattr(have, field) == pytest.approx(getattr(want, field), rel=1e-9), (
                    arm, metric, field)  # fmt: skip


def test_the_report_carries_adjusted_and_unadjusted_comparisons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config("127.0.0.1:1", "127.0.0.1:2", cuped={"lookback_days": 14},
                  success=[{"metric": "latency_ms", "max_relative_increase": 0.05}])  # fmt: skip
    cfg["results"] = {"url": "sqlite:///results.sqlite"}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    store.create()
    rng = np.random.default_rng(9)
    rows = []
    for u in range(400):
        arm, own = ("control" if u % 2 else "candidate"), rng.normal(100, 20)
        first = T0 + 30 * u
        rows.append(Exposure(f"pre-{u}", "", "", "", "m", f"u{u}", first - 3600,
                             own + rng.normal(0, 8), False, False, False))  # fmt: skip
        rows.append(Exposure(f"in-{u}", "ab", "p1", arm, "m", f"u{u}", first,
                             own + rng.normal(0, 8), False, False, False))  # fmt: skip
    store.write(rows, [])
    store.close()
    assert main(["report", "--config", str(path), "--experiment", "ab", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (latency,) = [c for c in report["comparisons"] if c["metric"] == "latency_ms"]
    plain = latency["unadjusted"]
    assert set(plain) == {"control_mean", "arm_mean", "difference", "ci", "relative",
                          "relative_ci", "p_value", "confidence_sequence"}  # fmt: skip
    assert latency["cuped"]["users_with_history"] == 400
    assert latency["cuped"]["variance_reduction"] > 0.5  # earlier and later correlate: ~0.86
    width = latency["confidence_sequence"][1] - latency["confidence_sequence"][0]
    assert width < plain["confidence_sequence"][1] - plain["confidence_sequence"][0]
    assert report["means"]["control"]["latency_ms"] == pytest.approx(plain["control_mean"])
    # No earlier request on the rates: nothing to adjust, same as before.
    (errors,) = [c for c in report["comparisons"] if c["metric"] == "error_rate"]
    assert errors["cuped"]["variance_reduction"] == 0.0
    # The tables say it too.
    assert main(["report", "--config", str(path), "--experiment", "ab"]) == 0
    text = capsys.readouterr().out
    assert "CUPED VARIANCE" in text
    assert f"-{latency['cuped']['variance_reduction']:.0%}" in text


def test_adjusted_statistics_keep_what_they_were() -> None:
    s = _sums(np.array([1.0, 2.0, 4.0]), np.ones(3), np.zeros(3), np.zeros(3))
    adjusted = adjust(s, *pooled([s, s]))
    assert isinstance(adjusted, Adjusted) and adjusted.theta == 0.0
    assert adjusted.mean == adjusted.unadjusted.mean and adjusted.with_history == 0


def test_a_covariate_alone_is_not_a_reported_metric(store: ResultsStore) -> None:
    """A user's reports before the phase make a covariate row, not an outcome of the phase."""
    phase = f"alone-{random.random()}"  # the PostgreSQL database is shared by the tests
    user = f"u-{phase}"
    before = Exposure(f"pre-{phase}", "", "", "", "m", user, T0 - 3600, 10.0, False, False,
                      False)  # fmt: skip
    during = Exposure(f"in-{phase}", "ab", phase, "control", "m", user, T0, 12.0, False, False,
                      False, cuped_lookback_s=14 * DAY)  # fmt: skip
    store.write([before], [Outcome(before.request_id, "rating", 4.0, T0 - 3500)])
    store.write([during], [])
    sums = cuped_sums(store, "ab", phase, ["rating"], lookback_days=14)
    assert (sums["control"]["rating"].a, sums["control"]["rating"].b) == (4.0, 1.0)
    assert sums["control"]["rating"].y == 0.0
    assert outcome_metrics(store, "ab", phase) == []
