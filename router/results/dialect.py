"""What differs between the store's two engines, in one place: INSERT ... ON CONFLICT's
construct, and how an IN list goes best."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, String, Table, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

# The two engines' INSERT constructs share one API for ON CONFLICT (DO NOTHING / DO UPDATE):
# choosing the construct is the only place the engine matters.
UPSERT: dict[str, Callable[[Table], sqlite.Insert | postgresql.Insert]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


def among(
    conn: Connection, column: ColumnElement[str], values: Sequence[str]
) -> ColumnElement[bool]:
    """On PostgreSQL one array parameter (`= ANY(:values)`): the statement's text stays the
    same however many values, so psycopg converts it once, where an IN list of a thousand
    parameters was parsed anew for every batch (a sixth of a write's time). Elsewhere, IN."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(String)))
    return column.in_(list(values))
