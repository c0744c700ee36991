"""Composition root of the auth service: settings → engine → store → use cases → server.

Nothing is built at import time. `run()` serves (`python -m pi.auth`), `migrate()` applies
the Alembic migrations, `rotate_keys()` makes a new current signing key. Tests build the
same object graph with `build(settings, clock=...)` and serve it in-process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import grpc
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.auth.domain import MAX_TOKEN_TTL
from pi.auth.revocations import RevocationFanout, StoreRevocationPoller
from pi.auth.service import AuthService, SigningKeyService, utcnow
from pi.auth.servicer import AuthInternalServicer, AuthServicer
from pi.auth.signing_keys import KeyRing
from pi.auth.store import AuthStore, idempotency_keys
from pi.platform import migrations, server
from pi.platform.cache import Cache, create_cache
from pi.platform.config import Settings
from pi.platform.crypto import MasterKeys
from pi.platform.db import create_engine
from pi.platform.idempotency import Idempotency
from pi.platform.interceptors import AuthInterceptor
from pi.platform.logging import configure as configure_logging
from pi.platform.tokens import RevocationList, TokenVerifier, listen_for_revocations
from pi.platform.validation import PageToken

_log = logging.getLogger(__name__)

SERVICE = "auth"
MIGRATIONS = Path(__file__).parent / "migrations"
AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
AUTH_INTERNAL_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthInternalService"].full_name
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
    engine: AsyncEngine
    store: AuthStore
    master_keys: MasterKeys
    signing_keys: SigningKeyService
    keys: KeyRing
    revocations: RevocationList
    cache: Cache
    auth: AuthService
    verifier: TokenVerifier
    interceptor: AuthInterceptor
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def register(self, grpc_server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(self.auth), grpc_server)
        auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(
            AuthInternalServicer(self.auth), grpc_server
        )

    async def housekeeping(self) -> None:
        """Background task: forget expired tokens and failure records, retire keys."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.auth.purge_expired()
                await self.signing_keys.retire_expired()
            except Exception:
                _log.exception("auth housekeeping failed")

    async def close(self) -> None:
        await self.cache.close()
        await self.engine.dispose()


async def build(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utcnow,
    cache: Cache | None = None,
    engine: AsyncEngine | None = None,
) -> AuthApp:
    """Wire the service; creates the first signing key if the database has none."""
    engine = engine or create_engine(settings)
    store = AuthStore(engine)
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
    revocations = RevocationList(clock=lambda: clock().timestamp())
    cache = cache or create_cache(settings)
    auth = AuthService(
        store,
        keys,
        master_keys,
        Idempotency(idempotency_keys),
        PageToken.from_master_keys(master_keys),
        RevocationFanout(revocations, cache),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        token_ttl=timedelta(seconds=settings.token_ttl_seconds),
        clock=clock,
    )
    verifier = TokenVerifier(
        keys,
        revocations,
        settings.jwt_issuer,
        settings.jwt_audience,
        clock=lambda: clock().timestamp(),
    )
    interceptor = AuthInterceptor(
        verifier, settings.admin_token, settings.service_token, public_methods=PUBLIC_METHODS
    )
    app = AuthApp(
        settings=settings,
        engine=engine,
        store=store,
        master_keys=master_keys,
        signing_keys=signing_keys,
        keys=keys,
        revocations=revocations,
        cache=cache,
        auth=auth,
        verifier=verifier,
        interceptor=interceptor,
    )
    poller = StoreRevocationPoller(
        auth.revocations_since, revocations, interval=settings.revocation_poll_seconds
    )
    app.background = [keys.run_refresher, poller.run, app.housekeeping]
    if settings.redis_url:
        app.background.append(lambda: listen_for_revocations(cache, revocations))
    return app


def check_migrated(settings: Settings) -> None:
    """Refuse to start on a database that `migrate` has not brought to head."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    current = migrations.current(settings, settings.db_schema, MIGRATIONS)
    if current != head:
        raise SystemExit(
            f"The auth database is at revision {current or 'none'}, not {head}: "
            "run `python -m pi.auth migrate` first."
        )


async def _serve() -> None:
    settings = Settings.from_env(SERVICE)
    configure_logging(settings)
    await asyncio.to_thread(check_migrated, settings)
    app = await build(settings)
    try:
        await server.serve(
            settings,
            register=app.register,
            service_names=[AUTH_SERVICE, AUTH_INTERNAL_SERVICE],
            interceptors=[app.interceptor],
            background=app.background,
        )
    finally:
        await app.close()


def run() -> None:
    """`python -m pi.auth`: serve until SIGTERM/SIGINT."""
    server.run(_serve)


def migrate() -> None:
    """`python -m pi.auth migrate`: apply the auth migrations and exit."""
    settings = Settings.from_env(SERVICE)
    configure_logging(settings)
    migrations.upgrade(settings, settings.db_schema, MIGRATIONS)
    _log.info("auth database migrated", extra={"schema": settings.db_schema})


async def _rotate_keys() -> str:
    settings = Settings.from_env(SERVICE)
    configure_logging(settings)
    engine = create_engine(settings)
    try:
        signing_keys = SigningKeyService(
            AuthStore(engine),
            MasterKeys(settings.master_keys),
            max_token_ttl=MAX_TOKEN_TTL,
            signer_lag=KEY_ACTIVATION + KEY_REFRESH,
        )
        return await signing_keys.rotate()
    finally:
        await engine.dispose()


def rotate_keys() -> str:
    """`python -m pi.auth rotate-keys`: make a new current signing key.

    Running servers publish it within `KEY_REFRESH` and sign with it after
    `KEY_ACTIVATION`; the previous key stays in the JWKS until its last token expired.
    """
    return asyncio.run(_rotate_keys())
