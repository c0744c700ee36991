"""The database errors adapters may catch, under names that do not depend on the driver.

Storage code catches these (`except IntegrityError:`), never psycopg's module directly,
and reads the SQLSTATE with `sqlstate(error)`. `Statement`, `Batch` and `Database` raise
psycopg's own exceptions, so these names are psycopg's classes:

- `DatabaseError`: anything the server or the connection reported (`psycopg.DatabaseError`);
- `IntegrityError`: a constraint refused a write (unique, foreign key, check);
- `OperationalError`: the connection broke, the server went away, or no pooled connection
  came in time (`psycopg_pool.PoolTimeout` is one).

`NoResultFound` and `MultipleResultsFound` are `Statement.one`'s: the statement ran, but did
not return exactly one row.
"""

from __future__ import annotations

from psycopg import DatabaseError, OperationalError
from psycopg.errors import IntegrityError

__all__ = [
    "CHECK_VIOLATION",
    "FOREIGN_KEY_VIOLATION",
    "UNIQUE_VIOLATION",
    "DatabaseError",
    "IntegrityError",
    "MultipleResultsFound",
    "NoResultFound",
    "OperationalError",
    "sqlstate",
]

UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"
FOREIGN_KEY_VIOLATION = "23503"


class NoResultFound(LookupError):
    """`Statement.one` found no row."""


class MultipleResultsFound(LookupError):
    """`Statement.one` found more than one row."""


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL sent with `error` (e.g. UNIQUE_VIOLATION), if any."""
    state = getattr(error, "sqlstate", None)
    return state if isinstance(state, str) else None
