"""The async SQLAlchemy engine a service's storage layer runs on.

PostgreSQL (production, tests): `postgresql+psycopg`, a fixed pool of `POOL_SIZE`
connections (`PI_DB_POOL_SIZE`; no overflow: under load connections are kept, not
opened and closed per burst; no pre-ping: they are recycled after 30 minutes), and
`schema_translate_map={None: schema}` so that tables declared with no schema land in
the service's own schema (`auth`, `transactions`, `payments`, or a test's unique
schema). `search_path` is set to the same schema so hand-written SQL agrees.

SQLite (embedded first run): `sqlite+aiosqlite` on `var/<service>.db`, WAL journal,
foreign keys on, and every transaction started with `BEGIN IMMEDIATE` so that concurrent
writers queue on the database lock instead of failing mid-transaction.

Reads run on `autocommit(engine)`: no BEGIN/ROLLBACK around them (on PostgreSQL a
ROLLBACK also makes psycopg drop the connection's prepared statements; on SQLite a
read takes no write lock). Writes keep `engine.begin()` transactions. The services' hot
units of work do not use this engine on PostgreSQL: see `pi.platform.db.database`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, event
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from pi.platform.config import DEFAULT_DB_POOL_SIZE, Settings

POOL_SIZE = DEFAULT_DB_POOL_SIZE
MAX_OVERFLOW = 0
SQLITE_BUSY_TIMEOUT_MS = 10_000

# The execution option that marks a SQLite engine's connections as autocommit (the
# driver's own AUTOCOMMIT level would be reset on every check-in, see `autocommit`).
_SQLITE_AUTOCOMMIT = "pi_autocommit"


def is_postgres(engine: AsyncEngine | Connection | Any) -> bool:
    """Whether an engine or connection (async or sync) talks to PostgreSQL."""
    return bool(engine.dialect.name == "postgresql")


def is_postgres_url(url: str) -> bool:
    return make_url(url).get_backend_name() in ("postgresql", "postgres")


def async_url(url: str) -> URL:
    """The URL with the async driver: `postgresql+psycopg` or `sqlite+aiosqlite`."""
    return _with_driver(url, postgres="postgresql+psycopg", sqlite="sqlite+aiosqlite")


def sync_url(url: str) -> URL:
    """The URL with the sync driver (for Alembic): `postgresql+psycopg` or `sqlite`."""
    return _with_driver(url, postgres="postgresql+psycopg", sqlite="sqlite+pysqlite")


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None for PostgreSQL / in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def create_engine(settings: Settings, **engine_options: Any) -> AsyncEngine:
    """Build the service's engine; call once in the composition root, dispose at exit."""
    if settings.is_postgres:
        engine_options = {"pool_size": settings.db_pool_size, **engine_options}
    return create_engine_for(settings.database_url, settings.db_schema, **engine_options)


def create_engine_for(url: str, schema: str, **engine_options: Any) -> AsyncEngine:
    """`create_engine` from a URL and schema (tests use this with a unique schema)."""
    if is_postgres_url(url):
        options: dict[str, Any] = {
            "pool_size": POOL_SIZE,
            "max_overflow": MAX_OVERFLOW,
            "pool_pre_ping": False,
            "pool_recycle": 1800,
            "connect_args": {"options": f"-c search_path={schema}"},
            "execution_options": {"schema_translate_map": {None: schema}},
        }
        options.update(engine_options)
        return create_async_engine(async_url(url), **options)

    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    options = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    options.update(engine_options)
    engine = create_async_engine(async_url(url), **options)
    _configure_sqlite(engine)
    return engine


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The engine (same pool) with every statement committed on its own: for reads.

    PostgreSQL: isolation level AUTOCOMMIT, so a read sends no BEGIN/ROLLBACK and the
    connection keeps its prepared statements. SQLite: the `BEGIN IMMEDIATE` of the
    engine is skipped (its connections are in driver autocommit mode already), so a
    read neither opens a transaction nor queues on the write lock. Create it once
    (in a store's constructor), not per query.
    """
    if is_postgres(engine):
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine.execution_options(**{_SQLITE_AUTOCOMMIT: True})


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on PostgreSQL and on SQLite (which has no zones).

    Binding a naive datetime is an error; results are always aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event (below) issue BEGIN instead of the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not conn.get_execution_options().get(_SQLITE_AUTOCOMMIT):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _with_driver(url: str, *, postgres: str, sqlite: str) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername=postgres)
    if backend == "sqlite":
        return parsed.set(drivername=sqlite)
    raise ValueError(f"unsupported database URL scheme: {parsed.drivername}")
