"""The results store: exposure and outcome rows in SQLite or PostgreSQL through one SQLAlchemy
Core layer. Writes are batches in one transaction each, deduplicated by id (retries and
restarts re-send); reads aggregate per unit, then per arm (router/results/query.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement

from router.results import migrations
from router.results.covariates import CovariateBatch
from router.results.dialect import UPSERT
from router.results.rollup import (
    REQUEST_METRICS,
    Deltas,
    new_exposures,
    new_outcomes,
    previous_outcomes,
    rebuild,
    reported_exposures,
    stored_times,
)
from router.results.schema import (
    dead_letters,
    exposure_dimensions,
    exposures,
    outcomes,
    staged_exposures,
    unit_outcomes,
    unit_requests,
    writer_lock,
)

log = logging.getLogger(__name__)


class StoreError(Exception):
    """The store cannot be used; the message says why (never the URL's password)."""


class RowsRejected(StoreError):
    """The database refused what the batch holds (a value too long, a NUL in text, a
    constraint), not the connection: the same rows would fail again, so the writer splits the
    batch to find them (router/results/writer.py)."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"{store}: {reason}")
        self.reason = reason


# Errors in the rows, from SQLAlchemy's statements and from psycopg's COPY (which goes to the
# driver directly). Anything else (a connection refused or lost) is the store being down.
_ROW_ERRORS = (DataError, IntegrityError, psycopg.DataError, psycopg.IntegrityError)


class SchemaError(StoreError):
    """The store is at another schema version than this router's, or damaged: refuse it,
    never misread it."""


@dataclass(frozen=True)
class Exposure:
    """One routed request of an experiment's phase, and what came of it."""

    request_id: str
    experiment: str
    seed: str
    arm: str
    model: str
    unit: str
    at: float
    latency_ms: float
    error: bool
    fallback: bool
    quality_failed: bool
    input_tokens: int = 0
    output_tokens: int = 0
    dimensions: Mapping[str, str] = field(default_factory=dict)
    """Segment values (router/experiments/segments.py): dimension name -> value."""
    cuped_lookback_s: float = 0.0
    """The phase's CUPED lookback (0: none): the writer sums a user's covariate over it at
    their first exposure (router/results/covariates.py). Not a column of `exposures`."""


@dataclass(frozen=True)
class Outcome:
    """What a caller reported about one answer: a metric's value for a request id."""

    request_id: str
    metric: str
    value: float
    at: float


Event = Exposure | Outcome


@dataclass(frozen=True)
class DeadLetter:
    """An event the store refused on its own, and the database's words for why."""

    id: int
    event: Event
    reason: str
    at: float


def engine_url(url: str, base_dir: Path | None = None) -> str:
    """The SQLAlchemy URL for `sqlite:///PATH` (a relative PATH is relative to `base_dir`) or
    `postgresql://USER@HOST:PORT/DB` (driven by psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if not parsed.database or parsed.database == ":memory:":
            raise StoreError("sqlite:///PATH needs a file (results must survive restarts)")
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return parsed.set(drivername="sqlite", database=str(path)).render_as_string(False)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(False)
    raise StoreError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
    )


def _sqlite_pragmas(connection: Any, _: object) -> None:
    # WAL: readers (reports) never block the one writer; a busy writer waits instead of failing.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class ResultsStore:
    def __init__(self, url: str, base_dir: Path | None = None, create_file: bool = True) -> None:
        self.url = engine_url(url, base_dir)
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            path = Path(parsed.database or "")
            if not create_file and not path.is_file():
                raise StoreError(f"no results store at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        # A database that is down must fail a flush within seconds, not hang it on TCP.
        connect = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
        self.engine: Engine = create_engine(self.url, pool_pre_ping=True, connect_args=connect)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._upsert = UPSERT[self.engine.dialect.name]
        self.ready = False

    @classmethod
    def existing(cls, url: str, base_dir: Path | None = None) -> ResultsStore:
        """A store a router has written, for reading: StoreError, never a new empty store,
        when there is none at `url`."""
        store = cls(url, base_dir, create_file=False)
        try:
            with store.engine.begin() as conn:
                if migrations.stored_version(conn) is None:
                    raise StoreError(
                        f"no results store at {store.describe()} (no results tables: a router "
                        "creates them when it first starts with this results.url)"
                    )
                migrations.check(conn)
            store.ready = True
        except migrations.SchemaProblem as exc:
            store.close()
            raise SchemaError(f"{store.describe()} {exc}") from exc
        except SQLAlchemyError as exc:
            store.close()
            raise StoreError(f"{store.describe()}: {_reason(exc)}") from exc
        except StoreError:
            store.close()
            raise
        return store

    def describe(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def create(self) -> None:
        """Create the tables on first use; refuse a store at another schema version, or one
        that is damaged (router/results/migrations.py)."""
        try:
            with self.engine.begin() as conn:
                migrations.check(conn)
        except migrations.SchemaProblem as exc:
            raise SchemaError(f"{self.describe()} {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc
        self.ready = True

    def migrate(self) -> tuple[int | None, int]:
        """Upgrade the store to this router's schema in one transaction; (from, to)."""
        try:
            with self.engine.begin() as conn:
                return migrations.migrate(conn)
        except migrations.SchemaProblem as exc:
            raise SchemaError(f"{self.describe()} {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc

    def write(self, rows: Sequence[Exposure], reports: Sequence[Outcome]) -> list[str]:
        """One transaction: new exposures (a re-sent one is ignored), outcomes (a repeat
        replaces the earlier value). Returns the request ids that another exposure already
        holds (a caller reused the id; this one is not stored and its outcomes join the
        first). RowsRejected when the database refuses a row's data."""
        if not self.ready:
            self.create()
        first: dict[str, dict[str, Any]] = {}
        reused: list[str] = []
        for e in rows:
            row = _row(e)
            seen = first.setdefault(e.request_id, row)
            if seen is not row and seen != row:
                reused.append(e.request_id)
        exposure_rows = list(first.values())
        # The latest report per (request, metric) wins, inside a batch as across batches.
        latest: dict[tuple[str, str], Outcome] = {}
        for o in reports:
            key = (o.request_id, o.metric)
            if key not in latest or o.at >= latest[key].at:
                latest[key] = o
        outcome_rows = [_row(o) for o in latest.values()]
        try:
            with self.engine.begin() as conn:
                # Writers apply their batches one at a time (see writer_lock).
                conn.execute(select(writer_lock).with_for_update())
                deltas = Deltas()
                fresh: Sequence[Mapping[str, Any]] = []
                lookbacks = {r["request_id"]: r.pop("cuped_lookback_s", 0.0)
                             for r in exposure_rows}  # fmt: skip
                if exposure_rows:
                    segments = {r["request_id"]: r.pop("dimensions", None) for r in exposure_rows}
                    fresh = self._insert_exposures(conn, exposure_rows, reused)
                    new_exposures(conn, fresh, deltas)
                    _insert_dimensions(conn, fresh, segments)
                reported = reported_exposures(conn, outcome_rows)
                covariates = CovariateBatch(conn, fresh, lookbacks, reported)
                previous: dict[tuple[str, str], tuple[float, float]] = {}
                if outcome_rows:
                    previous = previous_outcomes(conn, outcome_rows)
                    up = self._upsert(outcomes)
                    # The latest report wins by when it was made, not by which replica's
                    # batch lands last (a retry through one replica must not undo a later
                    # correction through another).
                    stmt = up.on_conflict_do_update(
                        index_elements=["request_id", "metric"],
                        set_={"value": up.excluded.value, "at": up.excluded.at},
                        where=up.excluded.at >= outcomes.c.at,
                    )
                    conn.execute(stmt, outcome_rows)
                    new_outcomes(outcome_rows, reported, previous, deltas)
                self._add_totals(conn, deltas)
                covariates.apply(conn, previous, outcome_rows)
        except _ROW_ERRORS as exc:
            raise RowsRejected(self.describe(), _reason(exc)) from exc
        except (SQLAlchemyError, psycopg.Error) as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc
        return reused

    def _insert_exposures(
        self, conn: Connection, rows: list[dict[str, Any]], reused: list[str]
    ) -> Sequence[Mapping[str, Any]]:
        """Insert a batch; returns the new exposures (a re-sent one is skipped; the rollup adds
        those of phases, CUPED's covariates may take any), and adds to `reused` the ids another
        request's exposure already holds. Not one multi-row INSERT with RETURNING: that
        statement is as long as the batch, and psycopg parses it anew every time (two thirds
        of a PostgreSQL write's CPU, in the router's process). PostgreSQL gets the batch by
        COPY into a staging table and INSERT ... SELECT; SQLite, in-process, by an
        executemany after asking which phase rows it already holds (the writer lock keeps
        other writers out meanwhile). Both measured in docs/benchmarks.md (results)."""
        phase_ids = [r["request_id"] for r in rows if r["experiment"]]
        if conn.dialect.name != "postgresql":
            stored = stored_times(conn, [r["request_id"] for r in rows])
            reused += [i for r in rows if stored.get(i := r["request_id"], r["at"]) != r["at"]]
            plain = self._upsert(exposures).on_conflict_do_nothing(index_elements=["request_id"])
            conn.execute(plain, rows)
            return [r for r in rows if r["request_id"] not in stored]
        conn.execute(CreateTable(staged_exposures, if_not_exists=True))
        _copy(conn, rows)
        names = [c.name for c in exposures.columns]
        in_phase = staged_exposures.c.experiment != ""

        def move(where: ColumnElement[bool]) -> Insert:
            return (
                self._upsert(exposures)
                .from_select(names, select(staged_exposures).where(where))
                .on_conflict_do_nothing(index_elements=["request_id"])
            )

        fresh: list[Mapping[str, Any]] = []
        for where, present in ((~in_phase, len(phase_ids) < len(rows)), (in_phase, phase_ids)):
            if present:
                returning = move(where).returning(*(exposures.c[n] for n in _RETURNED))
                # RowMapping is a Mapping keyed by column name (typed with Any keys).
                fresh += cast(Sequence[Mapping[str, Any]], conn.execute(returning).mappings())
        if len(fresh) < len(rows):
            # Some ids were stored already: a re-sent event (the same time) or a reused id.
            held = exposures.alias("held")
            clash = select(staged_exposures.c.request_id).join(
                held, held.c.request_id == staged_exposures.c.request_id
            )
            reused += conn.execute(clash.where(held.c.at != staged_exposures.c.at)).scalars()
        conn.execute(delete(staged_exposures))
        return fresh

    def _add_totals(self, conn: Connection, deltas: Deltas) -> None:
        """Add a batch's sums to the per-user rollup (one upsert per table)."""
        keys = ["experiment", "seed", "arm", "unit"]
        requests = deltas.request_rows()
        if requests:
            up = self._upsert(unit_requests)
            sums = ("requests", *REQUEST_METRICS)
            conn.execute(
                up.on_conflict_do_update(
                    index_elements=keys,
                    set_={
                        **{c: unit_requests.c[c] + up.excluded[c] for c in sums},
                        "first_at": case(
                            (up.excluded.first_at < unit_requests.c.first_at, up.excluded.first_at),
                            else_=unit_requests.c.first_at,
                        ),
                    },
                ),
                requests,
            )
        reports = deltas.outcome_rows()
        if reports:
            up = self._upsert(unit_outcomes)
            conn.execute(
                up.on_conflict_do_update(
                    index_elements=[*keys, "metric"],
                    set_={
                        "x": unit_outcomes.c.x + up.excluded.x,
                        "y": unit_outcomes.c.y + up.excluded.y,
                    },
                ),
                reports,
            )

    def set_aside(self, letters: Sequence[tuple[Event, str]], at: float, limit: int) -> int:
        """Keep events the store refused, with the reason, while it holds fewer than `limit`;
        returns how many were kept (the first ones)."""
        if not letters:
            return 0
        try:
            with self.engine.begin() as conn:
                count = select(func.count()).select_from(dead_letters)
                held = int(conn.execute(count).scalar_one())
                kept = letters[: max(limit - held, 0)]
                if kept:
                    conn.execute(
                        insert(dead_letters),
                        [
                            {
                                "kind": event_kind(event),
                                "reason": reason.replace("\x00", "\\x00")[:1000],
                                "at": at,
                                # ensure_ascii: a NUL or any other character becomes an escape.
                                "event": json.dumps(_row(event), ensure_ascii=True),
                            }
                            for event, reason in kept
                        ],
                    )
                return len(kept)
        except (SQLAlchemyError, psycopg.Error) as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc

    def dead_letters(self) -> list[DeadLetter]:
        """Every event set aside, oldest first."""
        query = select(dead_letters).order_by(dead_letters.c.id)
        return [
            DeadLetter(r.id, _event(r.kind, json.loads(r.event)), r.reason, r.at)
            for r in self.read(query)
        ]

    def forget_dead_letters(self, ids: Sequence[int]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(dead_letters).where(dead_letters.c.id.in_(list(ids))))
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc

    def rebuild(
        self, experiment: str, seed: str, outcome_metrics: Sequence[str], lookback: float = 0.0
    ) -> None:
        """Recompute a phase's per-user totals from its events; with a CUPED `lookback`
        (seconds), its users' covariates too."""
        try:
            with self.engine.begin() as conn:
                conn.execute(select(writer_lock).with_for_update())
                rebuild(conn, experiment, seed, outcome_metrics, lookback)
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc

    def prune(self, experiment: str, seed: str | None = None) -> int:
        """Delete a finished phase's exposures (every phase of `experiment` without `seed`), and
        the outcomes of those requests. Returns the exposures deleted."""
        where = [exposures.c.experiment == experiment]
        if seed is not None:
            where.append(exposures.c.seed == seed)
        ids = select(exposures.c.request_id).where(*where)
        try:
            with self.engine.begin() as conn:
                for table in (unit_requests, unit_outcomes):
                    rolled = [table.c.experiment == experiment]
                    if seed is not None:
                        rolled.append(table.c.seed == seed)
                    conn.execute(delete(table).where(*rolled))
                conn.execute(delete(outcomes).where(outcomes.c.request_id.in_(ids)))
                conn.execute(
                    delete(exposure_dimensions).where(exposure_dimensions.c.request_id.in_(ids))
                )
                return conn.execute(delete(exposures).where(*where)).rowcount
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc

    def read(self, query: Select[Any]) -> list[Row[Any]]:
        """The rows of a SELECT, or StoreError saying why not."""
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).all())
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.describe()}: {_reason(exc)}") from exc

    def count(self, experiment: str, seed: str) -> int:
        q = select(func.count()).where(
            exposures.c.experiment == experiment, exposures.c.seed == seed
        )
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


def _insert_dimensions(
    conn: Connection,
    fresh: Sequence[Mapping[str, Any]],
    segments: Mapping[str, Mapping[str, str] | None],
) -> None:
    """The segment values of the exposures just stored (a re-sent one has its rows)."""
    rows = [
        {"request_id": r["request_id"], "name": name, "value": value}
        for r in fresh
        for name, value in (segments.get(r["request_id"]) or {}).items()
    ]
    if rows:
        conn.execute(insert(exposure_dimensions), rows)


# What the rollup and the covariates need of a new exposure.
_RETURNED = ("request_id", "experiment", "seed", "arm", "unit", "at", "latency_ms", "error",
             "fallback", "quality_failed")  # fmt: skip


def _copy(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL's COPY into the connection's staging table: one stream, rows adapted in C."""
    names = [c.name for c in staged_exposures.columns]
    driver: Any = conn.connection.driver_connection
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {staged_exposures.name} ({', '.join(names)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row([row[n] for n in names])


def _row(event: Exposure | Outcome) -> dict[str, Any]:
    """An event's fields as a row. Not `dataclasses.asdict`, which deep-copies every field and
    was two thirds of a write's CPU (it shares the router's GIL with serving)."""
    return dict(vars(event))


def event_kind(event: Event) -> str:
    """`exposure` or `outcome`: the `kind` of the metrics and of a dead letter."""
    return "exposure" if isinstance(event, Exposure) else "outcome"


def _event(kind: str, fields: dict[str, Any]) -> Event:
    return Exposure(**fields) if kind == "exposure" else Outcome(**fields)


def _reason(exc: SQLAlchemyError | psycopg.Error) -> str:
    """The driver's own words, without SQL or parameters (which may hold user ids)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
