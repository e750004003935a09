"""CUPED's covariates in the per-user rollup, kept by the writers so a CUPED report reads one
row per user (router/results/cuped_query.py) instead of every event of the phase and of its
users' earlier requests.

A user's covariate in a phase with a lookback L is what the store holds about their requests
in [first_at - L, first_at), in any model or experiment or none: the request metrics' sums in
`unit_requests.pre_*` and each outcome metric's sum and count in `unit_outcomes.a`/`b`. Each
write transaction keeps it equal to that definition:

- a user new to a phase (or whose first exposure arrives later than a later one, moving
  `first_at` earlier, or whose phase now has another lookback) gets it summed from the events
  at the end of the transaction, everything of the batch included;
- for the others, a new exposure of theirs inside the window (a replica's batch landing late)
  adds its request metrics and its stored outcomes, and a new or changed outcome of an earlier
  exposure inside the window adds its value or the change.

`router/results/cuped_query.py` checks the rollup against the same sums computed from the
events, and uses the events whenever a phase's rows were summed over another lookback than the
one configured (a store from before schema 3, or a lookback changed mid-phase)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, and_, bindparam, select, update

from router.results.dialect import UPSERT, among
from router.results.schema import (
    PRE_REQUEST_SUMS,
    exposures,
    outcomes,
    unit_outcomes,
    unit_requests,
)

DAY = 86_400.0
CHUNK = 5000

Key = tuple[str, str, str, str]
"""(experiment, seed, arm, unit): a user in a phase."""
_KEY = ("experiment", "seed", "arm", "unit")
_REQUEST_FIELDS = ("latency_ms", "error", "fallback", "quality_failed")


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _request_sums(row: Mapping[str, Any]) -> list[float]:
    """One request's contribution to PRE_REQUEST_SUMS."""
    return [1.0, *(float(row[f]) for f in _REQUEST_FIELDS)]


class Window:
    """One user in one phase: the lookback window their covariate covers."""

    def __init__(self, first_at: float, lookback: float) -> None:
        self.first_at = first_at
        self.lookback = lookback

    def holds(self, at: float) -> bool:
        return self.lookback > 0 and self.first_at - self.lookback <= at < self.first_at


class CovariateBatch:
    """One write transaction's changes to the covariates. Made after the batch's exposures are
    inserted and before the rollup adds them (it reads which users each phase held before)."""

    def __init__(
        self,
        conn: Connection,
        fresh: Sequence[Mapping[str, Any]],
        lookbacks: Mapping[str, float],
        reported: Mapping[str, Any],
    ) -> None:
        """`reported`: the exposures the batch's outcomes are about (stored earlier, or just
        now), by request id."""
        self.fresh = fresh
        self.fresh_ids = {r["request_id"] for r in fresh}
        self.reported = reported
        units = {r["unit"] for r in fresh} | {e.unit for e in reported.values()}
        self.before = _windows(conn, sorted(units))
        # Users to sum from the events at the end (their first_at read then, after the rollup
        # took the batch): new to a CUPED phase, first_at moving earlier, or another lookback.
        self.reset: dict[Key, float] = {}
        for r in fresh:
            lookback = lookbacks.get(r["request_id"], 0.0)
            if not r["experiment"] or lookback <= 0:
                continue
            key: Key = (r["experiment"], r["seed"], r["arm"], r["unit"])
            held = self.before.get(key)
            if held is None or r["at"] < held.first_at or held.lookback != lookback:
                self.reset[key] = lookback
        self.by_unit: dict[str, list[tuple[Key, Window]]] = defaultdict(list)
        for held_key, window in self.before.items():
            self.by_unit[held_key[3]].append((held_key, window))

    def _windows_holding(self, unit: str, at: float) -> Iterator[Key]:
        for key, window in self.by_unit.get(unit, ()):
            if key not in self.reset and window.holds(at):
                yield key

    def apply(
        self, conn: Connection, previous: Mapping[tuple[str, str], tuple[float, float]],
        outcome_rows: Sequence[Mapping[str, Any]],
    ) -> None:  # fmt: skip
        """After the batch's outcomes and the rollup's sums are written."""
        requests: dict[Key, list[float]] = defaultdict(lambda: [0.0] * len(PRE_REQUEST_SUMS))
        reported: dict[tuple[Key, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        # Exposures that landed late, inside a window: their request metrics, and whatever
        # outcomes of theirs the store holds now (this batch's included).
        late = {r["request_id"]: r for r in self.fresh
                if any(True for _ in self._windows_holding(r["unit"], r["at"]))}  # fmt: skip
        stored_outcomes = _outcomes_of(conn, sorted(late))
        for request_id, r in late.items():
            for key in self._windows_holding(r["unit"], r["at"]):
                for i, v in enumerate(_request_sums(r)):
                    requests[key][i] += v
                for metric, value in stored_outcomes.get(request_id, ()):
                    total = reported[(key, metric)]
                    total[0] += value
                    total[1] += 1.0
        # Outcomes of exposures stored before this batch, inside a window: new, or changed.
        for o in outcome_rows:
            e = self.reported.get(o["request_id"])
            prev = previous.get((o["request_id"], o["metric"]))
            if e is None or o["request_id"] in self.fresh_ids:
                continue
            if prev is not None and o["at"] < prev[1]:
                continue  # an older report than the stored one: not written
            for key in self._windows_holding(e.unit, float(e.at)):
                total = reported[(key, o["metric"])]
                total[0] += float(o["value"]) - (prev[0] if prev else 0.0)
                total[1] += 0.0 if prev else 1.0
        _add(conn, requests, reported)
        if self.reset:
            firsts = _windows(conn, sorted({key[3] for key in self.reset}), cuped_only=False)
            resum(conn, {key: Window(firsts[key].first_at, lookback)
                         for key, lookback in self.reset.items()})  # fmt: skip


def _outcomes_of(conn: Connection, ids: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
    found: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for chunk in _chunks(ids):
        query = select(outcomes.c.request_id, outcomes.c.metric, outcomes.c.value).where(
            among(conn, outcomes.c.request_id, chunk)
        )
        for request_id, metric, value in conn.execute(query):
            found[request_id].append((metric, float(value)))
    return found


def _windows(conn: Connection, units: Sequence[str], cuped_only: bool = True) -> dict[Key, Window]:
    """The phases these users are in (those with a covariate, unless not `cuped_only`), each
    with its window."""
    r = unit_requests.c
    found: dict[Key, Window] = {}
    for chunk in _chunks(units):
        query = select(r.experiment, r.seed, r.arm, r.unit, r.first_at, r.lookback).where(
            among(conn, r.unit, chunk), *([r.lookback > 0] if cuped_only else [])
        )
        for experiment, seed, arm, unit, first_at, lookback in conn.execute(query):
            found[(experiment, seed, arm, unit)] = Window(float(first_at), float(lookback))
    return found


def _where_key(table: Any) -> Any:
    return and_(*(table.c[k] == bindparam(f"k_{k}") for k in _KEY))


def _key_params(key: Key) -> dict[str, str]:
    return {f"k_{k}": v for k, v in zip(_KEY, key, strict=True)}


def _add(conn: Connection, requests: Mapping[Key, list[float]],
         reported: Mapping[tuple[Key, str], list[float]]) -> None:  # fmt: skip
    """Add late contributions to users' covariates (their rows exist: they were held)."""
    if requests:
        r = unit_requests.c
        stmt = (update(unit_requests).where(_where_key(unit_requests))
                .values({n: r[n] + bindparam(f"d_{n}") for n in PRE_REQUEST_SUMS}))  # fmt: skip
        conn.execute(stmt, [
            {**_key_params(key), **{f"d_{n}": v for n, v in zip(PRE_REQUEST_SUMS, sums,
                                                                   strict=True)}}
            for key, sums in requests.items()
        ])  # fmt: skip
    if reported:
        _upsert_outcomes(conn, reported, add=True)


def _upsert_outcomes(conn: Connection, sums: Mapping[tuple[Key, str], list[float]],
                     add: bool) -> None:  # fmt: skip
    up = UPSERT[conn.dialect.name](unit_outcomes)
    o = unit_outcomes.c
    stmt = up.on_conflict_do_update(
        index_elements=[*_KEY, "metric"],
        set_={"a": o.a + up.excluded.a, "b": o.b + up.excluded.b} if add
        else {"a": up.excluded.a, "b": up.excluded.b},
    )  # fmt: skip
    conn.execute(stmt, [
        {**dict(zip(_KEY, key, strict=True)), "metric": metric, "x": 0.0, "y": 0.0,
         "a": a, "b": b}
        for (key, metric), (a, b) in sums.items()
    ])  # fmt: skip


def resum(conn: Connection, reset: Mapping[Key, Window]) -> None:
    """Sum these users' covariates from the events, replacing what their rows held."""
    by_unit: dict[str, list[tuple[Key, Window]]] = defaultdict(list)
    for key, window in reset.items():
        by_unit[key[3]].append((key, window))
    earliest = min(w.first_at - w.lookback for w in reset.values())
    latest = max(w.first_at for w in reset.values())
    requests: dict[Key, list[float]] = {key: [0.0] * len(PRE_REQUEST_SUMS) for key in reset}
    reported: dict[tuple[Key, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    e = exposures.c
    for chunk in _chunks(sorted(by_unit)):
        span = and_(among(conn, e.unit, chunk), e.at >= earliest, e.at < latest)
        columns = (e.request_id, e.unit, e.at, *(e[f] for f in _REQUEST_FIELDS))
        rows = conn.execute(select(*columns).where(span)).mappings().all()
        held: dict[str, list[Key]] = {}
        for row in cast(Sequence[Mapping[str, Any]], rows):
            for key, w in by_unit[row["unit"]]:
                if w.holds(float(row["at"])):
                    held.setdefault(row["request_id"], []).append(key)
                    for i, v in enumerate(_request_sums(row)):
                        requests[key][i] += v
        for request_id, found in _outcomes_of(conn, sorted(held)).items():
            for metric, value in found:
                for key in held[request_id]:
                    total = reported[(key, metric)]
                    total[0] += value
                    total[1] += 1.0
    stmt = (update(unit_requests).where(_where_key(unit_requests))
            .values(first_at=bindparam("v_first_at"), lookback=bindparam("v_lookback"),
                    **{n: bindparam(f"v_{n}") for n in PRE_REQUEST_SUMS}))  # fmt: skip
    conn.execute(stmt, [
        {**_key_params(key), "v_first_at": reset[key].first_at,
         "v_lookback": reset[key].lookback,
         **{f"v_{n}": v for n, v in zip(PRE_REQUEST_SUMS, sums, strict=True)}}
        for key, sums in requests.items()
    ])  # fmt: skip
    # Metrics a user had before and has no longer (an earlier window): back to zero.
    conn.execute(
        update(unit_outcomes).where(_where_key(unit_outcomes)).values(a=0.0, b=0.0),
        [_key_params(key) for key in reset],
    )
    if reported:
        _upsert_outcomes(conn, reported, add=False)
