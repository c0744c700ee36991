"""A PostgreSQL role per service, limited to its own schema (pi.platform.db.roles).

`python -m pi.<svc> migrate` with PI_DB_SERVICE_ROLE creates the role and grants it its
schema's tables and nothing else: payments' role cannot read auth's signing keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pi.auth.bootstrap import MIGRATIONS as AUTH_MIGRATIONS
from pi.auth.settings import AuthSettings
from pi.payments.bootstrap import MIGRATIONS as PAYMENTS_MIGRATIONS
from pi.payments.settings import PaymentsSettings
from pi.platform.db import migrations
from pi.platform.db.database import open_database_for
from pi.platform.db.engine import libpq_url
from pi.platform.db.roles import role_url
from pi.platform.runtime.wiring import migrate_service
from tests.support.settings import required_environ


@pytest.fixture
def two_services(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """auth and payments migrated into fresh schemas, each with its own role."""
    suffix = uuid.uuid4().hex[:10]
    names = {svc: f"t_{suffix}_{svc}" for svc in ("auth", "payments")}
    try:
        for service, settings_type, location in (
            ("auth", AuthSettings, AUTH_MIGRATIONS),
            ("payments", PaymentsSettings, PAYMENTS_MIGRATIONS),
        ):
            environ = {
                **required_environ(),
                "DATABASE_URL": pg_url,
                "PI_DB_SCHEMA": names[service],
                "PI_DB_SERVICE_ROLE": names[service],
                "PI_LOG_LEVEL": "WARNING",
            }
            with monkeypatch.context() as patch:
                for key, value in environ.items():
                    patch.setenv(key, value)
                migrate_service(settings_type, location)
        yield names
    finally:
        with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
            for name in names.values():
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'.encode())
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)
                ).fetchone()
                if exists:
                    conn.execute(f'DROP OWNED BY "{name}"'.encode())
                    conn.execute(f'DROP ROLE "{name}"'.encode())


def _as(pg_url: str, role: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(libpq_url(role_url(pg_url, role)), autocommit=True)


def test_payments_role_cannot_read_auths_signing_keys(
    pg_url: str, two_services: dict[str, str]
) -> None:
    auth, payments = two_services["auth"], two_services["payments"]
    with _as(pg_url, payments) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'SELECT * FROM "{auth}".signing_keys'.encode())
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'SELECT * FROM "{auth}".api_keys'.encode())
    # The owner of the data can: the refusal is the role's, not a missing table.
    with _as(pg_url, auth) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{auth}".signing_keys'.encode()).fetchone()


def test_a_service_role_uses_its_own_tables_but_cannot_change_them(
    pg_url: str, two_services: dict[str, str]
) -> None:
    payments = two_services["payments"]
    with _as(pg_url, payments) as conn:
        conn.execute(f'SELECT count(*) FROM "{payments}".payments'.encode())
        conn.execute(f'DELETE FROM "{payments}".outbox WHERE false'.encode())
        for ddl in (
            f'DROP TABLE "{payments}".payments',
            f'TRUNCATE "{payments}".payments',
            f'CREATE TABLE "{payments}".stolen (x int)',
            f'ALTER TABLE "{payments}".payments ADD COLUMN x int',
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(ddl.encode())


def test_the_service_starts_as_its_role(pg_url: str, two_services: dict[str, str]) -> None:
    """What `python -m pi.payments` does first, on the role's own connection: the
    migration check and a pooled query in its schema."""
    payments = two_services["payments"]
    url = role_url(pg_url, payments)
    assert migrations.current(url, payments, PAYMENTS_MIGRATIONS) == migrations.head(
        PAYMENTS_MIGRATIONS
    )

    async def query() -> object:
        database = await open_database_for(url, payments, pool_size=1)
        try:
            async with database.reading() as conn:
                cursor = await conn.execute("SELECT count(*) FROM transaction_refs")
                row = await cursor.fetchone()
                return None if row is None else row[0]
        finally:
            await database.close()

    assert asyncio.run(query()) == 0


def test_role_url_swaps_only_the_credentials() -> None:
    assert (
        role_url("postgresql://root:pw@db:5432/pi?sslmode=require", "pi_auth", "p@ss:w/rd")
        == "postgresql://pi_auth:p%40ss%3Aw%2Frd@db:5432/pi?sslmode=require"
    )
    assert role_url("postgresql://@/pi?host=/tmp/s", "pi_payments") == (
        "postgresql://pi_payments@/pi?host=/tmp/s"
    )
    assert role_url("postgresql:///pi?host=/tmp/s", "pi_payments") == (
        "postgresql://pi_payments@/pi?host=/tmp/s"
    )
