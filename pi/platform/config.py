"""Process settings, parsed once from the environment into a frozen `Settings`.

A service's composition root calls `Settings.from_env("payments")` and passes the result
down; nothing else reads `os.environ`. Every missing or invalid variable is reported at
once in a single `ConfigError`, so a newcomer fixes their environment in one go.

`SERVICE_PORTS` is the one place the services' default gRPC ports are written: the
default targets below, the edge (`pi.edge`) and `make run` (`pi.launcher`) use it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

SERVICE_PORTS: Mapping[str, int] = MappingProxyType(
    {"auth": 50051, "transactions": 50052, "payments": 50053}
)
"""Default gRPC port of each service, in port order (`make run` counts on it)."""

DEFAULT_HOST = "127.0.0.1"
MAX_TOKEN_TTL_SECONDS = 900
DEFAULT_RATE_LIMIT_PER_MERCHANT = 100
# PostgreSQL connections each service process may hold (its one pool): 3 services x 20
# stay under a server's default max_connections of 100 (see the README for the worst case).
DEFAULT_DB_POOL_SIZE = 20
MAX_DB_POOL_SIZE = 100
"""Requests per second per merchant per service: Stripe's live-mode default."""
MAX_RATE_LIMIT_PER_MERCHANT = 1_000_000
MASTER_KEY_BYTES = 32

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def default_target(service: str) -> str:
    """Where `service` listens when nothing says otherwise: `127.0.0.1:<its port>`."""
    return f"{DEFAULT_HOST}:{SERVICE_PORTS[service]}"


class ConfigError(Exception):
    """The environment is incomplete or wrong; `problems` lists every variable at fault."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class Settings:
    """Everything a service process needs to know about its environment.

    `database_url` is a `postgresql://` URL (`DATABASE_URL` is required). Secrets, the
    database and Redis URLs included (either may hold a password), are kept out of `repr`
    so that logging a `Settings` never leaks them.
    """

    service: str
    grpc_host: str
    grpc_port: int
    database_url: str = field(repr=False)
    db_schema: str
    redis_url: str | None = field(repr=False)
    admin_token: str = field(repr=False)
    service_token: str = field(repr=False)
    master_keys: Mapping[int, bytes] = field(repr=False, compare=False, hash=False)
    jwt_issuer: str = "pi-platform"
    jwt_audience: str = "pi-api"
    token_ttl_seconds: int = MAX_TOKEN_TTL_SECONDS
    auth_target: str = default_target("auth")
    transactions_target: str = default_target("transactions")
    payments_target: str = default_target("payments")
    revocation_poll_seconds: float = 2.0
    rate_limit_per_merchant: int = DEFAULT_RATE_LIMIT_PER_MERCHANT
    log_level: str = "INFO"
    db_pool_size: int = DEFAULT_DB_POOL_SIZE

    @property
    def listen_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse `environ` (default `os.environ`); `ConfigError` lists every problem."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None or value.strip() == "":
                return None
            return value.strip()

        def required(name: str, what: str) -> str:
            value = get(name)
            if value is None:
                problems.append(f"{name} is required ({what}).")
                return ""
            return value

        grpc_host = get("PI_GRPC_HOST") or DEFAULT_HOST
        default_port = SERVICE_PORTS.get(service, 0)
        grpc_port = _parse_int(
            get("PI_GRPC_PORT"), "PI_GRPC_PORT", default_port, 0, 65535, problems
        )

        database_url = get("DATABASE_URL") or ""
        if not database_url:
            problems.append(
                "DATABASE_URL is required (a postgresql:// URL). To try the platform "
                "without a PostgreSQL server, run `make run`: it starts an embedded "
                "PostgreSQL and passes its URL to the services."
            )
        elif _scheme(database_url) not in _POSTGRES_SCHEMES:
            problems.append(
                f"DATABASE_URL must be a postgresql:// URL (got scheme {_scheme(database_url)!r})."
            )

        db_schema = get("PI_DB_SCHEMA") or service
        if not _SCHEMA_RE.match(db_schema):
            problems.append(
                "PI_DB_SCHEMA must be a lowercase SQL identifier "
                f"(letters, digits, underscores; got {db_schema!r})."
            )

        redis_url = get("REDIS_URL")
        if redis_url is not None and _scheme(redis_url) not in _REDIS_SCHEMES:
            problems.append("REDIS_URL must be a redis://, rediss:// or unix:// URL.")

        admin_token = required("PI_ADMIN_TOKEN", "the admin bearer credential")
        service_token = required("PI_SERVICE_TOKEN", "the service-to-service bearer credential")
        if admin_token and admin_token == service_token:
            problems.append("PI_ADMIN_TOKEN and PI_SERVICE_TOKEN must differ.")
        for name, token in (
            ("PI_ADMIN_TOKEN", admin_token),
            ("PI_SERVICE_TOKEN", service_token),
        ):
            if token and (any(c.isspace() for c in token) or not token.isprintable()):
                problems.append(f"{name} must not contain whitespace or control characters.")

        raw_keys = required("PI_MASTER_KEYS", "e.g. 1=<base64 of 32 random bytes>,2=<...>")
        master_keys: dict[int, bytes] = {}
        if raw_keys:
            try:
                master_keys = parse_master_keys(raw_keys)
            except ValueError as exc:
                problems.append(f"PI_MASTER_KEYS: {exc}")

        token_ttl = _parse_int(
            get("PI_TOKEN_TTL_SECONDS"),
            "PI_TOKEN_TTL_SECONDS",
            MAX_TOKEN_TTL_SECONDS,
            1,
            MAX_TOKEN_TTL_SECONDS,
            problems,
        )
        poll = _parse_float(
            get("PI_REVOCATION_POLL_SECONDS"), "PI_REVOCATION_POLL_SECONDS", 2.0, problems
        )

        rate_limit = _parse_int(
            get("PI_RATE_LIMIT_PER_MERCHANT"),
            "PI_RATE_LIMIT_PER_MERCHANT",
            DEFAULT_RATE_LIMIT_PER_MERCHANT,
            0,
            MAX_RATE_LIMIT_PER_MERCHANT,
            problems,
        )

        db_pool_size = _parse_int(
            get("PI_DB_POOL_SIZE"),
            "PI_DB_POOL_SIZE",
            DEFAULT_DB_POOL_SIZE,
            1,
            MAX_DB_POOL_SIZE,
            problems,
        )

        log_level = (get("PI_LOG_LEVEL") or "INFO").upper()
        if log_level == "WARN":
            log_level = "WARNING"
        if log_level not in _LOG_LEVELS:
            problems.append(f"PI_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}.")

        if problems:
            raise ConfigError(problems)

        return cls(
            service=service,
            grpc_host=grpc_host,
            grpc_port=grpc_port,
            database_url=database_url,
            db_schema=db_schema,
            redis_url=redis_url,
            admin_token=admin_token,
            service_token=service_token,
            master_keys=MappingProxyType(master_keys),
            jwt_issuer=get("PI_JWT_ISSUER") or "pi-platform",
            jwt_audience=get("PI_JWT_AUDIENCE") or "pi-api",
            token_ttl_seconds=token_ttl,
            auth_target=get("PI_AUTH_TARGET") or default_target("auth"),
            transactions_target=get("PI_TRANSACTIONS_TARGET") or default_target("transactions"),
            payments_target=get("PI_PAYMENTS_TARGET") or default_target("payments"),
            revocation_poll_seconds=poll,
            rate_limit_per_merchant=rate_limit,
            log_level=log_level,
            db_pool_size=db_pool_size,
        )


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


def _parse_int(
    raw: str | None, name: str, default: int, low: int, high: int, problems: list[str]
) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be an integer (got {raw!r}).")
        return default
    if not low <= value <= high:
        problems.append(f"{name} must be between {low} and {high} (got {value}).")
        return default
    return value


def _parse_float(raw: str | None, name: str, default: float, problems: list[str]) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name} must be a number of seconds (got {raw!r}).")
        return default
    if not 0 < value <= 3600:
        problems.append(f"{name} must be greater than 0 and at most 3600 (got {raw}).")
        return default
    return value
