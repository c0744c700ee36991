"""Process settings, parsed once from the environment into one frozen value per service.

`ServiceSettings` holds what every service needs; each service subclasses it in its own
package (`pi.auth.settings.AuthSettings`, `pi.transactions.settings.TransactionsSettings`,
`pi.payments.settings.PaymentsSettings`) with the variables only it reads, so no service
parses, or refuses to start over, another's. A composition root calls
`PaymentsSettings.from_env()` and passes the result down; nothing else reads `os.environ`.

- Every missing or invalid variable is reported at once in a single `ConfigError`, so a
  newcomer fixes their environment in one go.
- Secrets are kept out of `repr` (and so `str`): the admin and service tokens, the master
  keys, and the database and Redis URLs, which may carry a password.
- `SERVICE_PORTS` is the one place the services' default gRPC ports are written: the
  default targets below, the edge (`pi.edge`) and `make run` (`pi.launcher`) use it.

Why frozen dataclasses with a shared `Environment` reader rather than pydantic-settings:
the standard library does all of it in one small module, with no new dependency (pydantic
and its compiled core) to pin, import at every service start and `migrate`, or pull into
the edge and the launcher, which import this module for the ports. And the reader keeps
what pydantic would make us rebuild: messages people act on (the `make run` hint for
DATABASE_URL; key material never echoed, where pydantic's errors quote the input by
default) and cross-variable checks (the two tokens must differ) reported with every other
problem, where pydantic runs its after-validators only once every field is valid.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Self

from pi.platform.environment import ConfigError, Environment
from pi.platform.secret_strength import weak_secrets
from pi.platform.security.mesh import MeshTls

SERVICE_PORTS: Mapping[str, int] = MappingProxyType(
    {"auth": 50051, "transactions": 50052, "payments": 50053}
)
"""Default gRPC port of each service, in port order (`make run` counts on it)."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_RATE_LIMIT_PER_MERCHANT = 100
"""Requests per second per merchant per service: Stripe's live-mode default."""
MAX_RATE_LIMIT_PER_MERCHANT = 1_000_000
#: Calls per second one client address may make to a service's methods that need no
#: token (IssueToken, GetJwks): far above a client's needs, far below a guessing run.
DEFAULT_RATE_LIMIT_PER_CLIENT_ADDRESS = 20
# PostgreSQL connections each service process may hold (its one pool): 3 services x 20
# stay under a server's default max_connections of 100 (see the README for the worst case).
DEFAULT_DB_POOL_SIZE = 20
MAX_DB_POOL_SIZE = 100
# Group commit (pi.platform.db.group_commit): groups in flight at once; 0 commits every
# unit alone.
DEFAULT_DB_COMMIT_GROUPS = 2
MAX_DB_COMMIT_GROUPS = 16
DEFAULT_REVOCATION_POLL_SECONDS = 2.0
#: Beyond this many seconds without a complete revocation view, verifiers refuse tokens
#: issued before it (fail closed). Several poll intervals: one lost poll is no outage.
DEFAULT_REVOCATION_MAX_STALENESS_SECONDS = 30.0
MASTER_KEY_BYTES = 32

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
PRODUCTION = "production"
DEVELOPMENT = "development"
_ENVIRONMENTS = (PRODUCTION, DEVELOPMENT)


def default_target(service: str) -> str:
    """Where `service` listens when nothing says otherwise: `127.0.0.1:<its port>`."""
    return f"{DEFAULT_HOST}:{SERVICE_PORTS[service]}"


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """What every service process needs to know about its environment.

    Not used on its own: each service's subclass names the service (`service`, which
    also gives the default port and schema) and adds its own variables by extending
    `_read`. `database_url` is a `postgresql://` URL (`DATABASE_URL` is required).
    """

    service: ClassVar[str]
    # Only a service with admin RPCs (auth's CreateMerchant) is given the admin token.
    serves_admin: ClassVar[bool] = False

    grpc_host: str = DEFAULT_HOST
    grpc_port: int
    database_url: str = field(repr=False)
    db_schema: str
    db_pool_size: int = DEFAULT_DB_POOL_SIZE
    db_commit_groups: int = DEFAULT_DB_COMMIT_GROUPS
    redis_url: str | None = field(default=None, repr=False)
    admin_token: str = field(repr=False)
    service_token: str = field(repr=False)
    # This process's mesh identity (PI_TLS_CA/CERT/KEY): with it the service serves mutual
    # TLS only and calls the others with its certificate; without it, plaintext on
    # loopback (tests of a single service).
    mesh_tls: MeshTls | None = None
    # A plaintext port serving only grpc.health.v1, for probes that cannot do mTLS
    # (the kubelet's gRPC probes); unset: none.
    health_port: int | None = None
    # `migrate` only: the role the service connects as, created and granted its schema
    # (pi.platform.db.roles); unset: none is made (tests, one role for everything).
    db_service_role: str | None = None
    db_service_role_password: str | None = field(default=None, repr=False)
    # A read-only mapping: not hashable, so left out of eq/hash (the key material decides
    # nothing a comparison of settings is for).
    master_keys: Mapping[int, bytes] = field(repr=False, compare=False, hash=False)
    jwt_issuer: str = "pi-platform"
    jwt_audience: str = "pi-api"
    auth_target: str = default_target("auth")
    revocation_poll_seconds: float = DEFAULT_REVOCATION_POLL_SECONDS
    revocation_max_staleness_seconds: float = DEFAULT_REVOCATION_MAX_STALENESS_SECONDS
    rate_limit_per_merchant: int = DEFAULT_RATE_LIMIT_PER_MERCHANT
    rate_limit_per_client_address: int = DEFAULT_RATE_LIMIT_PER_CLIENT_ADDRESS
    log_level: str = "INFO"
    environment: str = PRODUCTION

    @property
    def development(self) -> bool:
        """`PI_ENVIRONMENT=development`: weak secrets are tolerated (never in production)."""
        return self.environment == DEVELOPMENT

    @property
    def listen_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Parse `environ` (default `os.environ`); `ConfigError` lists every problem."""
        env = Environment(os.environ if environ is None else environ)
        values = cls._read(env)
        if env.problems:
            raise ConfigError(env.problems)
        return cls(**values)

    @classmethod
    def _read(cls, env: Environment) -> dict[str, Any]:
        """This class's fields from `env`, by name; a subclass adds its own to
        `super()._read(env)`. Problems go to `env`; a field at fault gets a placeholder."""
        values: dict[str, Any] = {
            "grpc_host": env.text("PI_GRPC_HOST", DEFAULT_HOST),
            "grpc_port": env.integer("PI_GRPC_PORT", SERVICE_PORTS[cls.service], 0, 65535),
            "database_url": _database_url(env),
            "db_schema": _db_schema(env, default=cls.service),
            "db_pool_size": env.integer(
                "PI_DB_POOL_SIZE", DEFAULT_DB_POOL_SIZE, 1, MAX_DB_POOL_SIZE
            ),
            "db_commit_groups": env.integer(
                "PI_DB_COMMIT_GROUPS", DEFAULT_DB_COMMIT_GROUPS, 0, MAX_DB_COMMIT_GROUPS
            ),
            "redis_url": _redis_url(env),
            "admin_token": (
                env.required("PI_ADMIN_TOKEN", "the admin bearer credential")
                if cls.serves_admin
                else env.get("PI_ADMIN_TOKEN") or ""
            ),
            "service_token": _service_token(env),
            "mesh_tls": _mesh_tls(env),
            "health_port": _health_port(env),
            "db_service_role": _db_service_role(env),
            "db_service_role_password": env.get("PI_DB_SERVICE_ROLE_PASSWORD"),
            "master_keys": _master_keys(env),
            "jwt_issuer": env.text("PI_JWT_ISSUER", "pi-platform"),
            "jwt_audience": env.text("PI_JWT_AUDIENCE", "pi-api"),
            "auth_target": env.target("auth"),
            "revocation_poll_seconds": env.seconds(
                "PI_REVOCATION_POLL_SECONDS", DEFAULT_REVOCATION_POLL_SECONDS
            ),
            "revocation_max_staleness_seconds": env.seconds(
                "PI_REVOCATION_MAX_STALENESS_SECONDS", DEFAULT_REVOCATION_MAX_STALENESS_SECONDS
            ),
            "rate_limit_per_merchant": env.integer(
                "PI_RATE_LIMIT_PER_MERCHANT",
                DEFAULT_RATE_LIMIT_PER_MERCHANT,
                0,
                MAX_RATE_LIMIT_PER_MERCHANT,
            ),
            "rate_limit_per_client_address": env.integer(
                "PI_RATE_LIMIT_PER_CLIENT_ADDRESS",
                DEFAULT_RATE_LIMIT_PER_CLIENT_ADDRESS,
                0,
                MAX_RATE_LIMIT_PER_MERCHANT,
            ),
            "log_level": _log_level(env),
            "environment": _environment(env),
        }
        _check_tokens(env, values["admin_token"], values["service_token"])
        if values["environment"] != DEVELOPMENT:
            for problem in weak_secrets(
                values["admin_token"], values["service_token"], values["master_keys"]
            ):
                env.problem(problem)
        if values["revocation_max_staleness_seconds"] < 2 * values["revocation_poll_seconds"]:
            env.problem(
                "PI_REVOCATION_MAX_STALENESS_SECONDS must be at least twice "
                "PI_REVOCATION_POLL_SECONDS (one late poll must not refuse every token)."
            )
        return values


def _database_url(env: Environment) -> str:
    url = env.get("DATABASE_URL") or ""
    if not url:
        env.problem(
            "DATABASE_URL is required (a postgresql:// URL). To try the platform "
            "without a PostgreSQL server, run `make run`: it starts an embedded "
            "PostgreSQL and passes its URL to the services."
        )
    elif _scheme(url) not in _POSTGRES_SCHEMES:
        # Only the scheme is quoted: the rest of the URL may hold a password.
        env.problem(f"DATABASE_URL must be a postgresql:// URL (got scheme {_scheme(url)!r}).")
    return url


def _db_schema(env: Environment, *, default: str) -> str:
    schema = env.text("PI_DB_SCHEMA", default)
    if not _SCHEMA_RE.match(schema):
        env.problem(
            "PI_DB_SCHEMA must be a lowercase SQL identifier "
            f"(letters, digits, underscores; got {schema!r})."
        )
    return schema


def _redis_url(env: Environment) -> str | None:
    url = env.get("REDIS_URL")
    if url is not None and _scheme(url) not in _REDIS_SCHEMES:
        env.problem("REDIS_URL must be a redis://, rediss:// or unix:// URL.")
    return url


def _mesh_tls(env: Environment) -> MeshTls | None:
    names = ("PI_TLS_CA", "PI_TLS_CERT", "PI_TLS_KEY")
    paths = [env.get(name) for name in names]
    if not any(paths):
        return None
    missing = [name for name, path in zip(names, paths, strict=True) if not path]
    if missing:
        env.problem(f"{', '.join(names)} are given together or not at all: {missing} missing.")
        return None
    unreadable = [
        name for name, path in zip(names, paths, strict=True) if not os.access(path or "", os.R_OK)
    ]
    if unreadable:
        env.problem(f"{', '.join(unreadable)}: no readable file at the path given.")
    return MeshTls(ca_path=paths[0] or "", cert_path=paths[1] or "", key_path=paths[2] or "")


def _service_token(env: Environment) -> str:
    """Only a plaintext mesh needs the shared service credential: with mutual TLS a
    service is known by its certificate."""
    if env.get("PI_TLS_CERT"):
        return env.get("PI_SERVICE_TOKEN") or ""
    return env.required(
        "PI_SERVICE_TOKEN", "the service-to-service bearer credential, unless PI_TLS_* are set"
    )


def _db_service_role(env: Environment) -> str | None:
    role = env.get("PI_DB_SERVICE_ROLE")
    if role is not None and not _SCHEMA_RE.match(role):
        env.problem("PI_DB_SERVICE_ROLE must be a lowercase SQL identifier.")
    return role


def _health_port(env: Environment) -> int | None:
    if env.get("PI_HEALTH_PORT") is None:
        return None
    return env.integer("PI_HEALTH_PORT", 0, 1, 65535)


def _check_tokens(env: Environment, admin: str, service: str) -> None:
    """The two credentials must tell callers apart and be sendable as a bearer header."""
    if admin and admin == service:
        env.problem("PI_ADMIN_TOKEN and PI_SERVICE_TOKEN must differ.")
    for name, token in (("PI_ADMIN_TOKEN", admin), ("PI_SERVICE_TOKEN", service)):
        if token and (any(c.isspace() for c in token) or not token.isprintable()):
            env.problem(f"{name} must not contain whitespace or control characters.")


def _environment(env: Environment) -> str:
    environment = env.text("PI_ENVIRONMENT", PRODUCTION).lower()
    if environment not in _ENVIRONMENTS:
        env.problem(f"PI_ENVIRONMENT must be one of {', '.join(_ENVIRONMENTS)}.")
        return PRODUCTION
    return environment


def _master_keys(env: Environment) -> Mapping[int, bytes]:
    raw = env.required("PI_MASTER_KEYS", "e.g. 1=<base64 of 32 random bytes>,2=<...>")
    keys: dict[int, bytes] = {}
    if raw:
        try:
            keys = parse_master_keys(raw)
        except ValueError as exc:
            env.problem(f"PI_MASTER_KEYS: {exc}")
    return MappingProxyType(keys)


def _log_level(env: Environment) -> str:
    level = env.text("PI_LOG_LEVEL", "INFO").upper()
    if level == "WARN":
        level = "WARNING"
    if level not in _LOG_LEVELS:
        env.problem(f"PI_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}.")
    return level


def parse_master_keys(raw: str) -> dict[int, bytes]:
    """Parse `1=<base64>,2=<base64>` into {version: 32-byte key}; raise ValueError."""
    keys: dict[int, bytes] = {}
    # Entries are named by position, never quoted: a key given without its `1=` (base64
    # often ends in "=") would otherwise be printed whole as the "version".
    for position, part in enumerate(raw.split(","), start=1):
        part = part.strip()
        if not part:
            continue
        version_text, sep, encoded = part.partition("=")
        if not sep:
            raise ValueError(f"entry {position} is not of the form <version>=<base64 key>.")
        try:
            version = int(version_text.strip())
        except ValueError:
            raise ValueError(f"entry {position}: the key version is not an integer.") from None
        if version < 1 or version > 2**31 - 1:
            raise ValueError(f"key version {version} must be a positive integer.")
        if version in keys:
            raise ValueError(f"key version {version} is given twice.")
        keys[version] = _decode_key(version, encoded.strip())
    if not keys:
        raise ValueError("no keys given.")
    return keys


def _decode_key(version: int, encoded: str) -> bytes:
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        if "-" in encoded or "_" in encoded:
            key = base64.urlsafe_b64decode(padded)
        else:
            key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key version {version} is not valid base64.") from None
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(
            f"key version {version} must decode to {MASTER_KEY_BYTES} bytes (got {len(key)})."
        )
    return key


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""
