"""Alembic migrations run programmatically into a per-service schema."""

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.platform.db import migrations

ENV_PY = """
from sqlalchemy import Column, MetaData, String, Table

from pi.platform.db.migrations import run_env

metadata = MetaData()
Table("widgets", metadata, Column("id", String(40), primary_key=True), Column("name", String(200)))

run_env(metadata)
"""

REVISION_1 = '''
"""create widgets"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("widgets", sa.Column("id", sa.String(40), primary_key=True))


def downgrade() -> None:
    op.drop_table("widgets")
'''

REVISION_2 = '''
"""add name"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("widgets", sa.Column("name", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("widgets") as batch:
        batch.drop_column("name")
'''


@pytest.fixture
def script_location(tmp_path: Path) -> Path:
    location = tmp_path / "migrations"
    (location / "versions").mkdir(parents=True)
    (location / "env.py").write_text(ENV_PY)
    (location / "script.py.mako").write_text(migrations.SCRIPT_TEMPLATE)
    (location / "versions" / "0001_create_widgets.py").write_text(REVISION_1)
    (location / "versions" / "0002_add_name.py").write_text(REVISION_2)
    return location


def _tables(pg_url: str, schema: str) -> set[str]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_creates_the_schema_tables_and_version_table_in_it(
    pg_url: str, pg_schema: str, script_location: Path
) -> None:
    schema = pg_schema + "_svc"  # not created yet: upgrade creates it
    try:
        migrations.upgrade(pg_url, schema, script_location)
        assert _tables(pg_url, schema) == {"widgets", "alembic_version"}
        assert "widgets" not in _tables(pg_url, "public")
        assert migrations.current(pg_url, schema, script_location) == "0002"
        migrations.upgrade(pg_url, schema, script_location)  # idempotent
        migrations.downgrade(pg_url, schema, script_location, "0001")
        assert migrations.current(pg_url, schema, script_location) == "0001"
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_same_files_migrate_two_schemas_independently(
    pg_url: str, pg_schema: str, pg_schema_module: str, script_location: Path
) -> None:
    migrations.upgrade(pg_url, pg_schema, script_location, "0001")
    migrations.upgrade(pg_url, pg_schema_module, script_location)
    assert migrations.current(pg_url, pg_schema, script_location) == "0001"
    assert migrations.current(pg_url, pg_schema_module, script_location) == "0002"


async def test_engine_on_the_migrated_schema_sees_the_tables(
    pg_url: str, pg_schema: str, script_location: Path, make_engine: Callable[..., AsyncEngine]
) -> None:
    migrations.upgrade(pg_url, pg_schema, script_location)
    engine = make_engine(pg_schema)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO widgets (id, name) VALUES ('w1', 'one')"))
        assert (await conn.execute(text("SELECT name FROM widgets"))).scalar_one() == "one"


def test_sqlite_upgrade_and_batch_downgrade(tmp_path: Path, script_location: Path) -> None:
    url = f"sqlite:///{tmp_path}/var/svc.db"
    migrations.upgrade(url, "ignored", script_location)
    assert (tmp_path / "var" / "svc.db").exists()
    assert migrations.current(url, None, script_location) == "0002"
    migrations.downgrade(url, None, script_location, "0001")
    assert migrations.current(url, None, script_location) == "0001"


def test_autogenerate_sees_only_the_service_schema(
    pg_url: str, pg_schema: str, script_location: Path
) -> None:
    migrations.upgrade(pg_url, pg_schema, script_location)
    migrations.revision(pg_url, pg_schema, script_location, "nothing", autogenerate=True)
    (new,) = [
        p for p in (script_location / "versions").glob("*.py") if not p.name.startswith("000")
    ]
    body = new.read_text()
    compile(body, str(new), "exec")
    assert "drop_table" not in body
    assert "create_table" not in body


def test_env_refuses_to_run_without_a_platform_connection(script_location: Path) -> None:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import MetaData

    config = Config()
    config.set_main_option("script_location", str(script_location))
    with (
        EnvironmentContext(config, ScriptDirectory(str(script_location))),
        pytest.raises(RuntimeError, match=r"pi\.platform\.migrations\.upgrade"),
    ):
        migrations.run_env(MetaData())
