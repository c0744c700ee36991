"""The database errors adapters may catch, under names that do not depend on the driver.

Storage code catches these (`except IntegrityError:`), never a driver's or SQLAlchemy's
classes directly, and reads the SQLSTATE with `sqlstate(error)`.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError as DatabaseError
from sqlalchemy.exc import IntegrityError, OperationalError

__all__ = [
    "CHECK_VIOLATION",
    "FOREIGN_KEY_VIOLATION",
    "UNIQUE_VIOLATION",
    "DatabaseError",
    "IntegrityError",
    "OperationalError",
    "sqlstate",
]

UNIQUE_VIOLATION = "23505"
CHECK_VIOLATION = "23514"
FOREIGN_KEY_VIOLATION = "23503"


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE PostgreSQL sent with `error` (e.g. UNIQUE_VIOLATION), if any."""
    orig = getattr(error, "orig", error)
    state = getattr(orig, "sqlstate", None)
    return state if isinstance(state, str) else None
