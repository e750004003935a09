"""The results schema's versions and the steps between them. A store records its version in
`gamaserving_schema`; a router uses only a store at its own version and refuses any other
(older: `router results migrate` upgrades it; newer: upgrade the router), and a store it cannot
read as any version (tables without a version, a version without its tables) is damaged.

Each step runs in the upgrade's one transaction (PostgreSQL and SQLite both roll DDL back), so
an upgrade that fails leaves the store as it was. A step defines the tables it creates as they
were at its version, never through the current schema module, which moves on."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
    update,
)

from router.results.schema import SCHEMA_VERSION, metadata, schema_info, writer_lock

MIGRATE_COMMAND = "router results migrate --results URL"


class SchemaProblem(Exception):
    """The store is not at this router's schema; the message says what to do."""


def _v1_to_v2(conn: Connection) -> None:
    """Version 2: events the store refuses on their own are kept as dead letters."""
    Table(
        "results_dead_letters",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("kind", String(16), nullable=False),
        Column("reason", Text, nullable=False),
        Column("at", Float, nullable=False),
        Column("event", Text, nullable=False),
    ).create(conn)


def _v2_to_v3(conn: Connection) -> None:
    """Version 3: each exposure's segment values (existing exposures have none: `(none)`), and
    CUPED's covariates in the per-user rollup (existing users get their first exposure and no
    covariate: lookback 0, so a CUPED report reads the events until each is recomputed)."""
    floats = {"unit_requests": ("first_at", "lookback", "pre_requests", "pre_latency_ms",
                                "pre_error_rate", "pre_fallback_rate",
                                "pre_quality_failure_rate"),
              "unit_outcomes": ("a", "b")}  # fmt: skip
    for table, columns in floats.items():
        for column in columns:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} FLOAT NOT NULL DEFAULT 0"))
    conn.execute(text(
        "UPDATE unit_requests SET first_at = (SELECT MIN(e.at) FROM exposures e WHERE "
        "e.experiment = unit_requests.experiment AND e.seed = unit_requests.seed AND "
        "e.arm = unit_requests.arm AND e.unit = unit_requests.unit)"
    ))  # fmt: skip
    conn.execute(text("CREATE INDEX unit_requests_unit ON unit_requests (unit)"))
    conn.execute(text("CREATE INDEX exposures_unit_at ON exposures (unit, at)"))
    Table(
        "exposure_dimensions",
        MetaData(),
        Column("request_id", String(128), nullable=False),
        Column("name", String(64), nullable=False),
        Column("value", String(64), nullable=False),
        PrimaryKeyConstraint("request_id", "name"),
        Index("exposure_dimensions_name", "name", "request_id"),
    ).create(conn)


STEPS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3}
"""From version N to N + 1."""


def stored_version(conn: Connection) -> int | None:
    """The store's schema version; None for an empty database (no results tables at all)."""
    tables = set(inspect(conn).get_table_names())
    ours = tables & set(metadata.tables)
    if schema_info.name not in tables:
        if ours:
            raise SchemaProblem(
                f"damaged: results tables ({', '.join(sorted(ours))}) without "
                f"{schema_info.name}, so no schema version; restore it from a backup"
            )
        return None
    versions = conn.execute(select(schema_info.c.version)).scalars().all()
    if not versions:
        raise SchemaProblem(
            f"damaged: {schema_info.name} holds no version row; restore it from a backup"
        )
    return int(max(versions))


def check(conn: Connection) -> None:
    """Refuse a store this router cannot use as it is; create an empty one."""
    version = stored_version(conn)
    if version is None:
        metadata.create_all(conn)
        conn.execute(insert(schema_info).values(version=SCHEMA_VERSION))
    elif version > SCHEMA_VERSION:
        raise SchemaProblem(
            f"holds results schema {version}, newer than this router's {SCHEMA_VERSION}: "
            "upgrade the router (it would misread the rows)"
        )
    elif version < SCHEMA_VERSION:
        raise SchemaProblem(
            f"holds results schema {version}, older than this router's {SCHEMA_VERSION}: "
            f"upgrade it with `{MIGRATE_COMMAND}` (it keeps every row)"
        )
    missing = set(metadata.tables) - set(inspect(conn).get_table_names())
    if missing:
        raise SchemaProblem(
            f"damaged: schema {version} without the tables {', '.join(sorted(missing))}; "
            "restore it from a backup"
        )
    if conn.execute(select(writer_lock)).first() is None:
        conn.execute(insert(writer_lock).values(id=1))


def migrate(conn: Connection) -> tuple[int | None, int]:
    """Upgrade the store to this router's schema, step by step; returns (from, to). An empty
    database is created at the current version."""
    version = stored_version(conn)
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaProblem(
            f"holds results schema {version}, newer than this router's {SCHEMA_VERSION}: "
            "nothing to do here; upgrade the router"
        )
    for step in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
        STEPS[step](conn)
        conn.execute(update(schema_info).values(version=step + 1))
    check(conn)
    return version, SCHEMA_VERSION
