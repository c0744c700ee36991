"""Alembic migrations run programmatically into a per-service schema."""

import time
from pathlib import Path

import psycopg
import pytest

from pi.platform.db import migrations
from pi.platform.db.database import open_database_for
from pi.platform.db.engine import libpq_url

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
    op.drop_column("widgets", "name")
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
    with psycopg.connect(libpq_url(pg_url)) as conn:
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
        with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_same_files_migrate_two_schemas_independently(
    pg_url: str, pg_schema: str, pg_schema_module: str, script_location: Path
) -> None:
    migrations.upgrade(pg_url, pg_schema, script_location, "0001")
    migrations.upgrade(pg_url, pg_schema_module, script_location)
    assert migrations.current(pg_url, pg_schema, script_location) == "0001"
    assert migrations.current(pg_url, pg_schema_module, script_location) == "0002"


async def test_a_database_on_the_migrated_schema_sees_the_tables(
    pg_url: str, pg_schema: str, script_location: Path
) -> None:
    migrations.upgrade(pg_url, pg_schema, script_location)
    database = await open_database_for(pg_url, pg_schema, pool_size=1)
    try:
        async with database.transaction() as conn:
            await conn.execute("INSERT INTO widgets (id, name) VALUES ('w1', 'one')")
            assert await (await conn.execute("SELECT name FROM widgets")).fetchone() == ("one",)
    finally:
        await database.close()


def test_migrations_leave_no_connection_open(
    pg_url: str, pg_schema: str, script_location: Path
) -> None:
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as watcher:

        def backends() -> set[int]:
            rows = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchall()
            return {int(row[0]) for row in rows}

        before = backends()
        migrations.upgrade(pg_url, pg_schema, script_location)
        assert migrations.current(pg_url, pg_schema, script_location) == "0002"
        # A backend ends a moment after its client hung up.
        deadline = time.monotonic() + 5
        while (left := backends() - before) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert left == set()


def test_a_schema_that_is_not_a_plain_identifier_is_refused(
    pg_url: str, script_location: Path
) -> None:
    with pytest.raises(ValueError, match="schema"):
        migrations.upgrade(pg_url, 'x"; DROP SCHEMA public; --', script_location)


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
        pytest.raises(RuntimeError, match=r"pi\.platform\.db\.migrations\.upgrade"),
    ):
        migrations.run_env(MetaData())
