"""Composition root of the auth service: settings → database → store → use cases → server.

Nothing is built at import time. `run()` serves (`python -m pi.auth`), `migrate()` applies
the Alembic migrations, `rotate_keys()` makes a new current signing key. Tests build the
same object graph with `build(settings, clock=...)` and serve it in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.auth.domain import MAX_TOKEN_TTL
from pi.auth.revocations import RevocationFanout, StoreRevocationPoller
from pi.auth.service import AuthService, SigningKeyService, utcnow
from pi.auth.servicer import AuthInternalServicer, AuthServicer
from pi.auth.signing_keys import KeyRing
from pi.auth.store import AuthStore, idempotency_keys
from pi.platform.cache import Cache, create_cache
from pi.platform.config import Settings
from pi.platform.db.database import Database, open_database
from pi.platform.db.idempotency import Idempotency
from pi.platform.kernel.pages import PageToken
from pi.platform.runtime.interceptors import AuthInterceptor
from pi.platform.runtime.logging import configure as configure_logging
from pi.platform.runtime.server import BackgroundTask, periodic
from pi.platform.runtime.wiring import Authentication, authentication, migrate_service, run_service
from pi.platform.security.crypto import MasterKeys
from pi.platform.security.tokens import TokenVerifier

SERVICE = "auth"
MIGRATIONS = Path(__file__).parent / "migrations"
AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
AUTH_INTERNAL_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthInternalService"].full_name
SERVICE_NAMES = (AUTH_SERVICE, AUTH_INTERNAL_SERVICE)
PUBLIC_METHODS = (f"/{AUTH_SERVICE}/IssueToken", f"/{AUTH_SERVICE}/GetJwks")

#: How often a running server reloads signing keys (picks up `rotate-keys`).
KEY_REFRESH = timedelta(seconds=30)
#: How long a new key is only published before it signs (see signing_keys.KeyRing).
KEY_ACTIVATION = KEY_REFRESH + timedelta(seconds=5)
HOUSEKEEPING_SECONDS = 600.0


@dataclass
class AuthApp:
    """The auth service's object graph, ready to register on a gRPC server."""

    settings: Settings
    database: Database
    store: AuthStore
    master_keys: MasterKeys
    signing_keys: SigningKeyService
    keys: KeyRing
    cache: Cache
    auth: AuthService
    authentication: Authentication
    background: list[BackgroundTask] = field(default_factory=list)

    @property
    def verifier(self) -> TokenVerifier:
        return self.authentication.verifier

    @property
    def interceptor(self) -> AuthInterceptor:
        return self.authentication.interceptor

    @property
    def interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """What the server installs: auth, then the per-merchant rate limit."""
        return self.authentication.interceptors

    def register(self, grpc_server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(self.auth), grpc_server)
        auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(
            AuthInternalServicer(self.auth), grpc_server
        )

    async def housekeeping(self) -> None:
        """One housekeeping pass: forget expired tokens and failure records, retire keys."""
        await self.auth.purge_expired()
        await self.signing_keys.retire_expired()

    async def close(self) -> None:
        await self.authentication.close()
        await self.cache.close()
        await self.database.close()


async def build(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utcnow,
    cache: Cache | None = None,
) -> AuthApp:
    """Wire the service; creates the first signing key if the database has none."""
    database = await open_database(settings)
    store = AuthStore(database)
    master_keys = MasterKeys(settings.master_keys)
    signing_keys = SigningKeyService(
        store,
        master_keys,
        max_token_ttl=MAX_TOKEN_TTL,
        signer_lag=KEY_ACTIVATION + KEY_REFRESH,
        clock=clock,
    )
    await signing_keys.ensure_current()
    keys = KeyRing(
        signing_keys.load,
        master_keys,
        clock=clock,
        refresh_interval=KEY_REFRESH,
        activation_delay=KEY_ACTIVATION,
    )
    await keys.refresh()
    cache = cache or create_cache(settings)
    callers = authentication(
        settings,
        keys=keys,
        cache=cache,
        public_methods=PUBLIC_METHODS,
        clock=lambda: clock().timestamp(),
    )
    auth = AuthService(
        store,
        keys,
        master_keys,
        Idempotency(idempotency_keys),
        PageToken(master_keys.derive_key("page-token")),
        RevocationFanout(callers.revocations, cache),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        token_ttl=timedelta(seconds=settings.token_ttl_seconds),
        clock=clock,
    )
    app = AuthApp(
        settings=settings,
        database=database,
        store=store,
        master_keys=master_keys,
        signing_keys=signing_keys,
        keys=keys,
        cache=cache,
        auth=auth,
        authentication=callers,
    )
    poller = StoreRevocationPoller(
        auth.revocations_since, callers.revocations, interval=settings.revocation_poll_seconds
    )
    app.background = [
        keys.run_refresher,
        poller.run,
        periodic(HOUSEKEEPING_SECONDS, app.housekeeping, name="auth housekeeping"),
        *callers.background,
    ]
    return app


def run() -> None:
    """`python -m pi.auth`: serve until SIGTERM/SIGINT."""
    run_service(SERVICE, build, SERVICE_NAMES, MIGRATIONS)


def migrate() -> None:
    """`python -m pi.auth migrate`: apply the auth migrations and exit."""
    migrate_service(SERVICE, MIGRATIONS)


async def _rotate_keys() -> str:
    settings = Settings.from_env(SERVICE)
    configure_logging(settings)
    database = await open_database(settings)
    try:
        signing_keys = SigningKeyService(
            AuthStore(database),
            MasterKeys(settings.master_keys),
            max_token_ttl=MAX_TOKEN_TTL,
            signer_lag=KEY_ACTIVATION + KEY_REFRESH,
        )
        return await signing_keys.rotate()
    finally:
        await database.close()


def rotate_keys() -> str:
    """`python -m pi.auth rotate-keys`: make a new current signing key.

    Running servers publish it within `KEY_REFRESH` and sign with it after
    `KEY_ACTIVATION`; the previous key stays in the JWKS until its last token expired.
    """
    return asyncio.run(_rotate_keys())
