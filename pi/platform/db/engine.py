"""SQLAlchemy's part: the UTC column type, database URLs, and the short-lived sync engine.

SQLAlchemy builds SQL and declares tables; it runs nothing in a serving process (the
units of work are psycopg's, see `pi.platform.db.database`). Its engine is used only
where Alembic needs one: `sync_engine(url, schema)` opens a connection per use (no pool)
and is disposed of when migrations finish.

A database URL is a `postgresql://` URL (`postgres://` and `postgresql+psycopg://` are
accepted too), e.g. `postgresql://pi@db.internal:5432/pi`, or, for a server listening
only on a unix socket (the embedded one, see `pi.platform.db.embedded`),
`postgresql://postgres@/pi?host=/path/to/socket-dir`; psycopg and SQLAlchemy both
accept that form.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import DateTime, Engine, create_engine
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def is_postgres_url(url: str) -> bool:
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in POSTGRES_SCHEMES


def libpq_url(url: str) -> str:
    """The URL as psycopg (libpq) takes it: `postgresql://...`."""
    return "postgresql://" + _rest(url)


def sqlalchemy_url(url: str) -> str:
    """The URL as SQLAlchemy takes it, with its psycopg driver: `postgresql+psycopg://...`."""
    return "postgresql+psycopg://" + _rest(url)


def validate_schema(schema: str) -> str:
    """`schema` if it is a plain lowercase SQL identifier (it is put in SQL unquoted)."""
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


def sync_engine(url: str, schema: str | None = None) -> Engine:
    """A SQLAlchemy engine without a pool (a connection per `connect()`), for migrations
    and tools; `dispose()` it when done.

    With `schema`, connections have `search_path` set to it and tables declared with no
    schema are translated into it (`schema_translate_map`), as the services' are.
    """
    if schema is None:
        return create_engine(sqlalchemy_url(url), poolclass=NullPool)
    validate_schema(schema)
    return create_engine(
        sqlalchemy_url(url),
        poolclass=NullPool,
        connect_args={"options": f"-c search_path={schema}"},
        execution_options={"schema_translate_map": {None: schema}},
    )


class UtcDateTime(TypeDecorator[datetime]):
    """`timestamptz` that only takes aware datetimes and always gives UTC ones.

    Binding a naive datetime is an error (ValueError): its zone would be the server's.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _rest(url: str) -> str:
    if not is_postgres_url(url):
        scheme = url.partition("://")[0] if "://" in url else url[:12]
        raise ValueError(f"not a postgresql:// URL (scheme {scheme!r})")
    return url.partition("://")[2]
