"""SQLAlchemy's part: database URLs, the short-lived sync engine, the UTC column type."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Engine, ForeignKey, Integer, MetaData, Table, select, text
from sqlalchemy.pool import NullPool

from pi.platform.db.engine import (
    UtcDateTime,
    is_postgres_url,
    libpq_url,
    sqlalchemy_url,
    sync_engine,
)
from pi.platform.db.errors import IntegrityError

metadata = MetaData()
parents = Table("parents", metadata, Column("id", Integer, primary_key=True))
children = Table(
    "children",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", Integer, ForeignKey("parents.id"), nullable=False),
    Column("at", UtcDateTime(), nullable=True),
)


def test_urls_get_the_right_scheme_for_each_client() -> None:
    socket = "postgresql://postgres@/pi?host=/tmp/pg%20data&port=5432"
    assert libpq_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert libpq_url("postgres://u@h/db") == "postgresql://u@h/db"
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url(socket) == socket.replace("postgresql:", "postgresql+psycopg:")
    assert is_postgres_url(socket) and is_postgres_url("POSTGRES://u@h/db")
    for other in ("sqlite:///var/x.db", "mysql://u@h/db", "postgresql"):
        assert not is_postgres_url(other)
        with pytest.raises(ValueError, match="not a postgresql:// URL"):
            libpq_url(other)


@pytest.fixture
def engine(pg_url: str, pg_schema: str) -> Iterator[Engine]:
    engine = sync_engine(pg_url, pg_schema)
    yield engine
    engine.dispose()


def test_tables_without_schema_land_in_the_given_schema(engine: Engine, pg_schema: str) -> None:
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(parents.insert().values(id=1))
        found = conn.execute(
            text("SELECT table_schema FROM information_schema.tables WHERE table_name='parents'")
        )
        assert [row[0] for row in found] == [pg_schema]
        # Hand-written SQL resolves through search_path to the same schema.
        assert conn.execute(text("SELECT count(*) FROM parents")).scalar_one() == 1
    # Constraints hold, and their violations are the platform's IntegrityError (psycopg's,
    # which SQLAlchemy wraps as `orig`).
    with pytest.raises(Exception) as failed, engine.begin() as conn:
        conn.execute(children.insert().values(id=1, parent_id=42))
    assert isinstance(getattr(failed.value, "orig", None), IntegrityError)


def test_the_engine_keeps_no_connection(engine: Engine) -> None:
    # A connection per connect(), closed when it is given back: nothing stays open.
    assert isinstance(engine.pool, NullPool)


def test_utc_datetimes_are_stored_as_instants_and_read_as_utc(engine: Engine) -> None:
    tokyo = timezone(timedelta(hours=9))
    at = datetime(2026, 3, 4, 23, 30, tzinfo=tokyo)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(parents.insert().values(id=1))
        conn.execute(children.insert().values(id=1, parent_id=1, at=at))
        stored = conn.execute(select(children.c.at)).scalar_one()
    assert stored == at and stored.tzinfo is UTC
    with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
        conn.execute(children.insert().values(id=2, parent_id=1, at=datetime(2026, 1, 1)))
