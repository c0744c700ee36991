"""Composition root of the auth service: settings → database → units of work → use cases
→ servicers → server (+ workers).

Nothing is built at import time. `run()` serves (`python -m pi.auth`), `migrate()` applies
the Alembic migrations, `rotate_keys()` makes a new current signing key. Tests build the
same object graph with `build(settings, clock=...)` and serve it in-process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.auth.adapters.address_failures import CacheAddressFailures
from pi.auth.adapters.postgres.uow import PostgresUnits
from pi.auth.adapters.revocations import RevocationFanout
from pi.auth.adapters.secrets import HmacSecretHasher
from pi.auth.adapters.signing_keys import EcKeyGenerator, KeyRing
from pi.auth.app.api_keys import CreateApiKey, ListApiKeys, RevokeApiKey
from pi.auth.app.housekeeping import PurgeExpired
from pi.auth.app.idempotency import SealedResponses
from pi.auth.app.jwks import GetJwks
from pi.auth.app.merchants import CreateMerchant
from pi.auth.app.ports import AddressFailures, Clock, RevocationSink, UnitsOfWork
from pi.auth.app.revocations import ListRevokedTokens
from pi.auth.app.signing_keys import SigningKeyLifecycle
from pi.auth.app.tokens import IssueToken, RevokeToken, Throttles
from pi.auth.app.use_cases import AuthUseCases
from pi.auth.domain.throttle import ADDRESS_POLICY, KEY_POLICY
from pi.auth.domain.tokens import MAX_TOKEN_TTL
from pi.auth.entrypoints.grpc import AuthInternalServicer, AuthServicer
from pi.auth.entrypoints.workers import HOUSEKEEPING_SECONDS, Housekeeping, StoreRevocationPoller
from pi.auth.settings import AuthSettings
from pi.platform.cache import Cache, MemoryCache, create_cache
from pi.platform.db.database import Database, open_database
from pi.platform.kernel.pages import PageToken
from pi.platform.runtime.interceptors import AuthInterceptor
from pi.platform.runtime.logging import configure as configure_logging
from pi.platform.runtime.server import BackgroundTask, periodic
from pi.platform.runtime.wiring import Authentication, authentication, migrate_service, run_service
from pi.platform.security.crypto import MasterKeys
from pi.platform.security.tokens import TokenVerifier

MIGRATIONS = Path(__file__).parent / "migrations"
AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
AUTH_INTERNAL_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthInternalService"].full_name
SERVICE_NAMES = (AUTH_SERVICE, AUTH_INTERNAL_SERVICE)
PUBLIC_METHODS = (f"/{AUTH_SERVICE}/IssueToken", f"/{AUTH_SERVICE}/GetJwks")

#: How often a running server reloads signing keys (picks up `rotate-keys`).
KEY_REFRESH = timedelta(seconds=30)
#: How long a new key is only published before it signs (see adapters.signing_keys.KeyRing).
KEY_ACTIVATION = KEY_REFRESH + timedelta(seconds=5)


def utcnow() -> datetime:
    """The clock of a running service."""
    return datetime.now(UTC)


@dataclass
class AuthApp:
    """The auth service's object graph, ready to register on a gRPC server."""

    settings: AuthSettings
    clock: Clock
    database: Database
    units: UnitsOfWork
    master_keys: MasterKeys
    keys: KeyRing
    cache: Cache
    use_cases: AuthUseCases
    authentication: Authentication
    background: list[BackgroundTask] = field(default_factory=list)
    owns_database: bool = True

    @property
    def signing_keys(self) -> SigningKeyLifecycle:
        return self.use_cases.signing_keys

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
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(self.use_cases), grpc_server)
        auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(
            AuthInternalServicer(self.use_cases), grpc_server
        )

    async def close(self) -> None:
        await self.authentication.close()
        await self.cache.close()
        if self.owns_database:
            await self.database.close()


def signing_key_lifecycle(
    units: UnitsOfWork, master_keys: MasterKeys, clock: Clock
) -> SigningKeyLifecycle:
    return SigningKeyLifecycle(
        units,
        EcKeyGenerator(master_keys),
        max_token_ttl=MAX_TOKEN_TTL,
        signer_lag=KEY_ACTIVATION + KEY_REFRESH,
        clock=clock,
    )


def wire_use_cases(
    units: UnitsOfWork,
    master_keys: MasterKeys,
    keys: KeyRing,
    revocations: RevocationSink,
    *,
    signing_keys: SigningKeyLifecycle,
    issuer: str,
    audience: str,
    token_ttl: timedelta,
    clock: Clock,
    address_failures: AddressFailures | None = None,
) -> AuthUseCases:
    """Every use case on `units`, signing with `keys` and announcing to `revocations`
    (also how the unit tests wire them, on the in-memory units). Failures per client
    address are kept in `address_failures` (default: in this process)."""
    hasher = HmacSecretHasher(master_keys)
    sealed = SealedResponses(master_keys)
    return AuthUseCases(
        create_merchant=CreateMerchant(units, hasher, sealed, clock),
        issue_token=IssueToken(
            units,
            hasher,
            keys,
            issuer=issuer,
            audience=audience,
            token_ttl=token_ttl,
            throttles=Throttles(
                address_failures
                or CacheAddressFailures(MemoryCache(), keep_for=ADDRESS_POLICY.window),
                ADDRESS_POLICY,
                KEY_POLICY,
            ),
            clock=clock,
        ),
        revoke_token=RevokeToken(units, revocations, clock),
        get_jwks=GetJwks(keys),
        create_api_key=CreateApiKey(units, hasher, sealed, clock),
        list_api_keys=ListApiKeys(units, PageToken(master_keys.derive_key("page-token"))),
        revoke_api_key=RevokeApiKey(units, revocations, clock),
        list_revoked_tokens=ListRevokedTokens(units, clock),
        purge_expired=PurgeExpired(units, KEY_POLICY, clock),
        signing_keys=signing_keys,
    )


def key_ring(signing_keys: SigningKeyLifecycle, master_keys: MasterKeys, clock: Clock) -> KeyRing:
    return KeyRing(
        signing_keys.published,
        master_keys,
        clock=clock,
        refresh_interval=KEY_REFRESH,
        activation_delay=KEY_ACTIVATION,
    )


async def build(
    settings: AuthSettings,
    *,
    clock: Clock = utcnow,
    cache: Cache | None = None,
    database: Database | None = None,
) -> AuthApp:
    """Wire the service; creates the first signing key if the database has none.

    A `database` given is the caller's to close; one opened here closes with the app.
    """
    owns_database = database is None
    database = database or await open_database(settings)
    units = PostgresUnits(database)
    master_keys = MasterKeys(settings.master_keys)
    signing_keys = signing_key_lifecycle(units, master_keys, clock)
    await signing_keys.ensure_current()
    keys = key_ring(signing_keys, master_keys, clock)
    await keys.refresh()
    cache = cache or create_cache(settings)
    callers = authentication(
        settings,
        keys=keys,
        cache=cache,
        public_methods=PUBLIC_METHODS,
        clock=lambda: clock().timestamp(),
    )
    use_cases = wire_use_cases(
        units,
        master_keys,
        keys,
        RevocationFanout(callers.revocations, cache),
        signing_keys=signing_keys,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        token_ttl=timedelta(seconds=settings.token_ttl_seconds),
        clock=clock,
        address_failures=CacheAddressFailures(cache, keep_for=ADDRESS_POLICY.window),
    )
    poller = StoreRevocationPoller(
        use_cases.list_revoked_tokens.since,
        callers.revocations,
        interval=settings.revocation_poll_seconds,
    )
    housekeeping = Housekeeping(use_cases.purge_expired, signing_keys)
    return AuthApp(
        settings=settings,
        clock=clock,
        database=database,
        units=units,
        master_keys=master_keys,
        keys=keys,
        cache=cache,
        use_cases=use_cases,
        authentication=callers,
        background=[
            keys.run_refresher,
            poller.run,
            periodic(HOUSEKEEPING_SECONDS, housekeeping, name="auth housekeeping"),
            *callers.background,
        ],
        owns_database=owns_database,
    )


def run() -> None:
    """`python -m pi.auth`: serve until SIGTERM/SIGINT."""
    run_service(AuthSettings, build, SERVICE_NAMES, MIGRATIONS)


def migrate() -> None:
    """`python -m pi.auth migrate`: apply the auth migrations and exit."""
    migrate_service(AuthSettings, MIGRATIONS)


async def _rotate_keys() -> str:
    settings = AuthSettings.from_env()
    configure_logging(settings)
    database = await open_database(settings)
    try:
        units = PostgresUnits(database)
        return await signing_key_lifecycle(units, MasterKeys(settings.master_keys), utcnow).rotate()
    finally:
        await database.close()


def rotate_keys() -> str:
    """`python -m pi.auth rotate-keys`: make a new current signing key.

    Running servers publish it within `KEY_REFRESH` and sign with it after
    `KEY_ACTIVATION`; the previous key stays in the JWKS until its last token expired.
    """
    return asyncio.run(_rotate_keys())
