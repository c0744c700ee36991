"""What every service's composition root (`pi/<svc>/bootstrap.py`) wires the same way.

- `authentication(settings, ...)`: how a service knows its callers. The admin and
  service credentials, and merchant access tokens verified against the auth service's
  keys with revocations kept current, as one `AuthInterceptor` plus the background tasks
  that keep it current; then the per-merchant rate limit (`RateLimitInterceptor`), so
  `Authentication.interceptors` is what a server installs.
- `run_service(...)`: the process `python -m pi.<svc>` runs. The service's settings
  from the environment, logging, refuse a database `migrate` has not brought to head,
  build the object graph, serve until SIGTERM/SIGINT, close.
- `migrate_service(...)`: `python -m pi.<svc> migrate`.

A service's `bootstrap.py` keeps what is its own: which stores, use cases and servicers,
which service names, which periodic housekeeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from pi.platform.cache import Cache, create_cache
from pi.platform.config import ServiceSettings
from pi.platform.db import migrations
from pi.platform.db.roles import grant_service_role
from pi.platform.observability import ObservabilitySettings
from pi.platform.observability import start as start_telemetry
from pi.platform.observability.pool import register_pool
from pi.platform.runtime import server
from pi.platform.runtime.address_limit import AddressLimitInterceptor, create_address_limit
from pi.platform.runtime.callers import CallerInterceptor
from pi.platform.runtime.clients import service_channel
from pi.platform.runtime.interceptors import AuthInterceptor, RateLimitInterceptor
from pi.platform.runtime.logging import configure as configure_logging
from pi.platform.runtime.ratelimit import create_rate_limiter
from pi.platform.runtime.server import BackgroundTask
from pi.platform.security.tokens import (
    KeySource,
    RemoteJwks,
    RevocationList,
    RevocationPoller,
    TokenVerifier,
    listen_for_revocations,
)

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


@dataclass
class Authentication:
    """How a service authenticates (and rate limits) its callers, and what keeps that current.

    Install `interceptors` on the server and run `background` with it; `close()` closes
    the channel to the auth service and the caches `authentication()` opened.
    """

    revocations: RevocationList
    verifier: TokenVerifier
    interceptor: AuthInterceptor
    background: list[BackgroundTask] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    caches: list[Cache] = field(default_factory=list)
    rate_limit: RateLimitInterceptor | None = None
    caller: CallerInterceptor | None = None
    address_limit: AddressLimitInterceptor | None = None

    @property
    def interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        """The caller allow-list (with mutual TLS), the per-address limit of tokenless
        methods, the auth interceptor, then the per-merchant rate limit (which counts
        the principal the auth interceptor set)."""
        chain: list[grpc.aio.ServerInterceptor] = []
        if self.caller is not None:
            chain.append(self.caller)
        if self.address_limit is not None:
            chain.append(self.address_limit)
        chain.append(self.interceptor)
        if self.rate_limit is not None:
            chain.append(self.rate_limit)
        return tuple(chain)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for cache in self.caches:
            await cache.close()


def authentication(
    settings: ServiceSettings,
    *,
    keys: KeySource | None = None,
    cache: Cache | None = None,
    public_methods: Iterable[str] = (),
    clock: Callable[[], float] = time.time,
) -> Authentication:
    """The admin and service credentials of `settings`, and merchant access tokens.

    Tokens are verified with `keys`; by default with the auth service's JWKS at
    `settings.auth_target`, whose revocations are then pulled every
    `settings.revocation_poll_seconds`. With REDIS_URL set, revocations published on
    `pi:revocations` are applied at once too, received over `cache` (or a connection
    opened here). `public_methods` need no credentials and are limited per client address
    (`settings.rate_limit_per_client_address`). Merchant calls are limited to
    `settings.rate_limit_per_merchant` per second (0: unlimited; see
    `pi.platform.runtime.ratelimit`). Call inside the event loop (gRPC channels bind to it).
    """
    public_methods = tuple(public_methods)
    revocations = RevocationList(clock=clock)
    background: list[BackgroundTask] = []
    channels: list[grpc.aio.Channel] = []
    if keys is None:
        auth_channel = peer_channel(settings, "auth", settings.auth_target)
        channels.append(auth_channel)
        jwks = RemoteJwks(auth_channel)
        poller = RevocationPoller(
            auth_channel,
            revocations,
            interval=settings.revocation_poll_seconds,
            service_token=None if settings.mesh_tls else settings.service_token,
        )
        keys = jwks
        background += [jwks.run, poller.run]
    opened: list[Cache] = []
    if settings.redis_url:
        if cache is None:
            cache = create_cache(settings)
            opened.append(cache)
        subscriber = cache
        background.append(lambda: listen_for_revocations(subscriber, revocations))
    verifier = TokenVerifier(
        keys,
        revocations,
        settings.jwt_issuer,
        settings.jwt_audience,
        clock=clock,
        max_staleness=settings.revocation_max_staleness_seconds,
    )
    interceptor = AuthInterceptor(
        verifier, settings.admin_token, settings.service_token, public_methods=public_methods
    )
    limiter = create_rate_limiter(settings)
    if limiter is not None:
        opened.append(limiter.cache)
    if settings.mesh_tls is not None:
        # Callers are known by their certificates: the shared service token means nothing.
        interceptor = AuthInterceptor(
            verifier, settings.admin_token, "", public_methods=public_methods
        )
    address_limit = create_address_limit(settings, public_methods)
    if address_limit is not None:
        opened.append(address_limit.limiter.cache)
    return Authentication(
        caller=CallerInterceptor() if settings.mesh_tls is not None else None,
        revocations=revocations,
        verifier=verifier,
        interceptor=interceptor,
        background=background,
        channels=channels,
        caches=opened,
        rate_limit=None if limiter is None else RateLimitInterceptor(limiter),
        address_limit=address_limit,
    )


def peer_channel(settings: ServiceSettings, service: str, target: str) -> grpc.aio.Channel:
    """A channel to `service` at `target`: mutual TLS with this process's identity when
    `settings.mesh_tls` is set (the server must prove it is `service`), else plaintext
    with the shared service token."""
    if settings.mesh_tls is not None:
        return service_channel(target, tls=settings.mesh_tls, server_name=service)
    return service_channel(target, service_token=settings.service_token)


class ServiceApp(Protocol):
    """A service's object graph as `run_service` serves it (each bootstrap.py's `...App`)."""

    @property
    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """In order, after the platform's error interceptor: auth, then rate limit."""

    @property
    def background(self) -> Sequence[BackgroundTask]: ...

    def register(self, grpc_server: grpc.aio.Server) -> None: ...

    async def close(self) -> None: ...


def run_service(
    settings_type: type[S],
    build: Callable[[S], Awaitable[ServiceApp]],
    service_names: Sequence[str],
    script_location: Path,
) -> None:
    """`python -m pi.<service>`: serve what `build` wires, from `settings_type.from_env()`,
    until SIGTERM/SIGINT.

    Refuses to start (SystemExit) on a database not migrated to the newest revision in
    `script_location`.
    """
    server.run(lambda: _serve(settings_type, build, service_names, script_location))


async def _serve(
    settings_type: type[S],
    build: Callable[[S], Awaitable[ServiceApp]],
    service_names: Sequence[str],
    script_location: Path,
) -> None:
    settings = settings_type.from_env()
    configure_logging(settings)
    telemetry = start_telemetry(
        ObservabilitySettings.from_env(settings.service, settings.grpc_port)
    )
    await asyncio.to_thread(migrations.check_migrated, settings, script_location)
    app = await build(settings)
    database = getattr(app, "database", None)
    if database is not None and telemetry.settings.enabled:
        register_pool(database.pool_stats)
    try:
        await server.serve(
            settings,
            register=app.register,
            service_names=service_names,
            interceptors=app.interceptors,
            background=app.background,
        )
    finally:
        await app.close()
        telemetry.close()


def migrate_service(settings_type: type[ServiceSettings], script_location: Path) -> None:
    """`python -m pi.<service> migrate`: apply the migrations in `script_location`."""
    settings = settings_type.from_env()
    configure_logging(settings)
    migrations.upgrade(settings, settings.db_schema, script_location)
    if settings.db_service_role:
        grant_service_role(
            settings.database_url,
            settings.db_schema,
            settings.db_service_role,
            settings.db_service_role_password,
        )
        log.info(
            "role %s may use the %s schema and nothing else",
            settings.db_service_role,
            settings.db_schema,
        )
    log.info("%s database migrated", settings.service, extra={"schema": settings.db_schema})
