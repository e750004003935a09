"""One schema for every engine (SQLAlchemy Core): exposures, outcomes, and the schema version."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from router.ids import MAX_ID_LENGTH

SCHEMA_VERSION = 3
"""Raised with every change to the tables, with its step in router/results/migrations.py; a
router uses only a store at its own version (2: dead letters; 3: exposure dimensions and
CUPED's covariates in the per-user rollup)."""

metadata = MetaData()

schema_info = Table(
    "gamaserving_schema",
    metadata,
    Column("version", Integer, nullable=False),
)

# Every routed request is a row; those in an experiment's phase are its exposures (the others
# have an empty experiment and give the per-model outcome trends).
exposures = Table(
    "exposures",
    metadata,
    # Unique per request (callers send UUIDs, or the router makes one): a re-sent event after a
    # retry or a restart is the same row, never a second one.
    Column("request_id", String(MAX_ID_LENGTH), primary_key=True),
    Column("experiment", String(128), nullable=False),
    Column("seed", String(128), nullable=False),
    Column("arm", String(128), nullable=False),
    # The model that answered; empty when the request failed.
    Column("model", String(128), nullable=False),
    # What was randomised: the user id, or the request id when there was none (either at most
    # MAX_ID_LENGTH, checked at the door; the column is wider since schema 1).
    Column("unit", String(256), nullable=False),
    Column("at", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("error", Boolean, nullable=False),
    Column("fallback", Boolean, nullable=False),
    Column("quality_failed", Boolean, nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Index("exposures_phase", "experiment", "seed", "arm", "unit"),
    Index("exposures_at", "at"),
    # A user's requests in a time window: CUPED's covariates (since schema 3).
    Index("exposures_unit_at", "unit", "at"),
)

# An exposure's segment values, one row per dimension its experiment names (router/experiments/
# segments.py): written with the exposure, at most 64 characters each. Since schema 3.
exposure_dimensions = Table(
    "exposure_dimensions",
    metadata,
    Column("request_id", String(MAX_ID_LENGTH), nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", String(64), nullable=False),
    PrimaryKeyConstraint("request_id", "name"),
    Index("exposure_dimensions_name", "name", "request_id"),
)

outcomes = Table(
    "outcomes",
    metadata,
    Column("request_id", String(MAX_ID_LENGTH), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("at", Float, nullable=False),
    # One value per (request, metric): a repeated report replaces the earlier one.
    PrimaryKeyConstraint("request_id", "metric"),
)


# Per unit (user) of a phase: how many requests, and the sums of the request metrics over
# them; per unit and outcome metric: the sum of the latest reported values (x) and how many
# of the unit's requests have one (y). Kept current in the same transaction as the events they
# sum, so a report reads one row per user (and outcome) instead of every exposure of the phase.
def _unit() -> list[Column[str]]:
    """The key of a user in a phase: what the rollup tables sum per."""
    return [
        Column("experiment", String(128), nullable=False),
        Column("seed", String(128), nullable=False),
        Column("arm", String(128), nullable=False),
        Column("unit", String(256), nullable=False),
    ]


def _sums(*names: str) -> list[Column[float]]:
    return [Column(name, Float, nullable=False) for name in names]


PRE_REQUEST_SUMS = ("pre_requests", "pre_latency_ms", "pre_error_rate", "pre_fallback_rate",
                    "pre_quality_failure_rate")  # fmt: skip
"""CUPED's covariate for the request metrics (router/results/covariates.py): the same sums
over the user's requests in the lookback before `first_at`, in any model or experiment."""

unit_requests = Table(
    "unit_requests",
    metadata,
    *_unit(),
    *_sums("requests", "latency_ms", "error_rate", "fallback_rate", "quality_failure_rate"),
    # Since schema 3: the user's first exposure in the phase, the CUPED lookback (seconds, 0
    # without CUPED) their covariate was summed over, and that covariate.
    Column("first_at", Float, nullable=False, server_default="0"),
    Column("lookback", Float, nullable=False, server_default="0"),
    *(Column(name, Float, nullable=False, server_default="0") for name in PRE_REQUEST_SUMS),
    PrimaryKeyConstraint("experiment", "seed", "arm", "unit"),
    # Which phases a user is in (a late event of theirs may fall in a covariate's lookback).
    Index("unit_requests_unit", "unit"),
)

unit_outcomes = Table(
    "unit_outcomes",
    metadata,
    *_unit(),
    Column("metric", String(64), nullable=False),
    *_sums("x", "y"),
    # Since schema 3: CUPED's covariate, the same sums (a: x, b: y) over the lookback.
    Column("a", Float, nullable=False, server_default="0"),
    Column("b", Float, nullable=False, server_default="0"),
    PrimaryKeyConstraint("experiment", "seed", "arm", "unit", "metric"),
)

# Events the store refused on their own (a value it cannot hold, a constraint), set aside by the
# writer so that they never hold the rest back (docs/operations.md, "Dead letters"). The event
# is ASCII JSON text, which every engine stores whatever the event held. Since schema 2.
dead_letters = Table(
    "results_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # exposure or outcome
    Column("reason", Text, nullable=False),
    Column("at", Float, nullable=False),
    Column("event", Text, nullable=False),
)

# One row; every write transaction locks it first, so writers (replicas) apply their batches
# one after another and an outcome and its exposure written at once by two replicas are never
# both missed by the rollup. SQLite has one writer anyway.
writer_lock = Table("results_writer_lock", metadata, Column("id", Integer, primary_key=True))

# Each writer's batch of exposures, bulk-loaded (COPY on PostgreSQL) before one INSERT ... SELECT
# moves the new ones into `exposures`. A temporary table: private to the connection, never
# logged, not part of the schema (created on demand, emptied after every batch).
staged_exposures = Table(
    "staged_exposures",
    MetaData(),
    *(Column(c.name, c.type, nullable=False) for c in exposures.columns),
    prefixes=["TEMPORARY"],
)
