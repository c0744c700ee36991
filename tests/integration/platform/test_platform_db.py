"""The engine: schema per service on PostgreSQL, WAL + foreign keys on SQLite."""

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.platform.config import Settings
from pi.platform.db.engine import async_url, create_engine, is_postgres, sync_url

metadata = MetaData()
parents = Table("parents", metadata, Column("id", Integer, primary_key=True))
children = Table(
    "children",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", Integer, ForeignKey("parents.id"), nullable=False),
)


def test_urls_get_the_right_drivers() -> None:
    assert async_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert async_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert async_url("sqlite:///var/x.db").drivername == "sqlite+aiosqlite"
    assert sync_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert sync_url("sqlite+aiosqlite:///var/x.db").drivername == "sqlite+pysqlite"


async def test_postgres_tables_without_schema_land_in_the_service_schema(
    settings_factory: Callable[..., Settings], pg_schema: str
) -> None:
    engine = create_engine(settings_factory("payments"))
    try:
        assert is_postgres(engine)
        assert engine.pool.size() == 10  # type: ignore[attr-defined]
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(parents.insert().values(id=1))
            found = await conn.execute(
                text(
                    "SELECT table_schema FROM information_schema.tables WHERE table_name='parents'"
                )
            )
            assert [row[0] for row in found] == [pg_schema]
            # Hand-written SQL resolves through search_path to the same schema.
            assert (await conn.execute(text("SELECT count(*) FROM parents"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_sqlite_creates_var_dir_and_enables_wal_and_foreign_keys(
    settings_factory: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    from pi.platform.config import Settings as S

    base = settings_factory("payments")
    env = {
        "PI_ADMIN_TOKEN": base.admin_token,
        "PI_SERVICE_TOKEN": base.service_token,
        "PI_MASTER_KEYS": "1=" + "A" * 43 + "=",
    }
    settings = S.from_env("payments", env)
    engine = create_engine(settings)
    try:
        assert not is_postgres(engine)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
        assert (tmp_path / "var" / "payments.db").exists()
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(children.insert().values(id=1, parent_id=42))
    finally:
        await engine.dispose()


async def test_sqlite_concurrent_writers_queue_instead_of_failing(
    make_engine: Callable[..., AsyncEngine], tmp_path: Path
) -> None:
    engine = make_engine("main", url=f"sqlite:///{tmp_path}/c.db")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)

    async def read_then_write(i: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT count(*) FROM parents"))
            await asyncio.sleep(0.01)
            await conn.execute(parents.insert().values(id=i))

    await asyncio.gather(*(read_then_write(i) for i in range(10)))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM parents"))).scalar_one() == 10
