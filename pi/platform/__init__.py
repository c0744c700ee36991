"""Pi Platform shared code: config, db, errors, auth, idempotency, server bootstrap.

Import from the modules (`from pi.platform.errors import NotFound`) or from here
(`from pi.platform import NotFound`). Names here are loaded lazily, so importing a
stdlib-only module such as `pi.platform.errors` does not pull in gRPC or SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pi.platform.cache import Cache, CacheError, MemoryCache, RedisCache, create_cache
    from pi.platform.clients import DEFAULT_DEADLINE_SECONDS, service_channel
    from pi.platform.config import ConfigError, Settings
    from pi.platform.crypto import (
        DecryptionError,
        MasterKeys,
        constant_time_equal,
        hash_secret,
        verify_secret,
    )
    from pi.platform.database import Database, open_database, open_database_for
    from pi.platform.db import UtcDateTime, create_engine, create_engine_for, is_postgres
    from pi.platform.errors import (
        Aborted,
        AlreadyExists,
        Code,
        DomainError,
        FailedPrecondition,
        FieldViolation,
        InvalidArgument,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
        ValidationErrors,
    )
    from pi.platform.idempotency import (
        Claim,
        Idempotency,
        fingerprint,
        idempotency_table,
        key_from,
    )
    from pi.platform.ids import is_valid_id, new_id
    from pi.platform.interceptors import AuthInterceptor, ErrorInterceptor, RateLimitInterceptor
    from pi.platform.principal import (
        Principal,
        current_principal,
        principal_of,
        require_admin,
        require_merchant,
        require_service,
    )
    from pi.platform.ratelimit import RateLimiter
    from pi.platform.rpc_status import abort_with, error_from_rpc_error, to_status_proto
    from pi.platform.tokens import (
        KeySource,
        RemoteJwks,
        RevocationList,
        RevocationPoller,
        StaticKeySource,
        TokenVerifier,
        listen_for_revocations,
        publish_revocation,
    )
    from pi.platform.validation import PageToken, page_size, printable_text

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("Cache", "CacheError", "MemoryCache", "RedisCache", "create_cache"), "cache"),
    **dict.fromkeys(("DEFAULT_DEADLINE_SECONDS", "service_channel"), "clients"),
    **dict.fromkeys(("ConfigError", "Settings"), "config"),
    **dict.fromkeys(
        (
            "DecryptionError",
            "MasterKeys",
            "constant_time_equal",
            "hash_secret",
            "verify_secret",
        ),
        "crypto",
    ),
    **dict.fromkeys(("Database", "open_database", "open_database_for"), "database"),
    **dict.fromkeys(("UtcDateTime", "create_engine", "create_engine_for", "is_postgres"), "db"),
    **dict.fromkeys(
        (
            "Aborted",
            "AlreadyExists",
            "Code",
            "DomainError",
            "FailedPrecondition",
            "FieldViolation",
            "InvalidArgument",
            "NotFound",
            "PermissionDenied",
            "ResourceExhausted",
            "Unauthenticated",
            "Unavailable",
            "ValidationErrors",
        ),
        "errors",
    ),
    **dict.fromkeys(
        ("Claim", "Idempotency", "fingerprint", "idempotency_table", "key_from"),
        "idempotency",
    ),
    **dict.fromkeys(("is_valid_id", "new_id"), "ids"),
    **dict.fromkeys(
        ("AuthInterceptor", "ErrorInterceptor", "RateLimitInterceptor"), "interceptors"
    ),
    "RateLimiter": "ratelimit",
    **dict.fromkeys(
        (
            "Principal",
            "current_principal",
            "principal_of",
            "require_admin",
            "require_merchant",
            "require_service",
        ),
        "principal",
    ),
    **dict.fromkeys(("abort_with", "error_from_rpc_error", "to_status_proto"), "rpc_status"),
    **dict.fromkeys(
        (
            "KeySource",
            "RemoteJwks",
            "RevocationList",
            "RevocationPoller",
            "StaticKeySource",
            "TokenVerifier",
            "listen_for_revocations",
            "publish_revocation",
        ),
        "tokens",
    ),
    **dict.fromkeys(("PageToken", "page_size", "printable_text"), "validation"),
}

__all__ = [
    "DEFAULT_DEADLINE_SECONDS",
    "Aborted",
    "AlreadyExists",
    "AuthInterceptor",
    "Cache",
    "CacheError",
    "Claim",
    "Code",
    "ConfigError",
    "Database",
    "DecryptionError",
    "DomainError",
    "ErrorInterceptor",
    "FailedPrecondition",
    "FieldViolation",
    "Idempotency",
    "InvalidArgument",
    "KeySource",
    "MasterKeys",
    "MemoryCache",
    "NotFound",
    "PageToken",
    "PermissionDenied",
    "Principal",
    "RateLimitInterceptor",
    "RateLimiter",
    "RedisCache",
    "RemoteJwks",
    "ResourceExhausted",
    "RevocationList",
    "RevocationPoller",
    "Settings",
    "StaticKeySource",
    "TokenVerifier",
    "Unauthenticated",
    "Unavailable",
    "UtcDateTime",
    "ValidationErrors",
    "abort_with",
    "constant_time_equal",
    "create_cache",
    "create_engine",
    "create_engine_for",
    "current_principal",
    "error_from_rpc_error",
    "fingerprint",
    "hash_secret",
    "idempotency_table",
    "is_postgres",
    "is_valid_id",
    "key_from",
    "listen_for_revocations",
    "new_id",
    "open_database",
    "open_database_for",
    "page_size",
    "principal_of",
    "printable_text",
    "publish_revocation",
    "require_admin",
    "require_merchant",
    "require_service",
    "service_channel",
    "to_status_proto",
    "verify_secret",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pi.platform' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pi.platform.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
