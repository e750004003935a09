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
)

SCHEMA_VERSION = 1
"""Raised with every change to the tables; a store written by a newer router refuses to start
an older one (it would misread or corrupt what it does not know)."""

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
    Column("request_id", String(128), primary_key=True),
    Column("experiment", String(128), nullable=False),
    Column("seed", String(128), nullable=False),
    Column("arm", String(128), nullable=False),
    # The model that answered; empty when the request failed.
    Column("model", String(128), nullable=False),
    # What was randomised: the user id, or the request id when there was none.
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
)

outcomes = Table(
    "outcomes",
    metadata,
    Column("request_id", String(128), nullable=False),
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
unit_requests = Table(
    "unit_requests",
    metadata,
    Column("experiment", String(128), nullable=False),
    Column("seed", String(128), nullable=False),
    Column("arm", String(128), nullable=False),
    Column("unit", String(256), nullable=False),
    Column("requests", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("error_rate", Float, nullable=False),
    Column("fallback_rate", Float, nullable=False),
    Column("quality_failure_rate", Float, nullable=False),
    PrimaryKeyConstraint("experiment", "seed", "arm", "unit"),
)

unit_outcomes = Table(
    "unit_outcomes",
    metadata,
    Column("experiment", String(128), nullable=False),
    Column("seed", String(128), nullable=False),
    Column("arm", String(128), nullable=False),
    Column("unit", String(256), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("x", Float, nullable=False),
    Column("y", Float, nullable=False),
    PrimaryKeyConstraint("experiment", "seed", "arm", "unit", "metric"),
)

# One row; every write transaction locks it first, so writers (replicas) apply their batches
# one after another and an outcome and its exposure written at once by two replicas are never
# both missed by the rollup. SQLite has one writer anyway.
writer_lock = Table("results_writer_lock", metadata, Column("id", Integer, primary_key=True))
