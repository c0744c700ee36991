"""What an API key, and so a token, may do: scopes, like Stripe's restricted keys.

A key carries a set of scopes; a token carries at most its key's scopes; every RPC names
the one scope it needs (`pi.platform.security.scopes.REQUIRED_SCOPE`, checked by the auth
interceptor for every merchant call). Managing keys (`api_keys:write`) is a scope apart,
which keys made only for payments do not hold, and no caller can create a key with a
scope it does not hold itself: a stolen payments token cannot mint a lasting credential.
"""

from __future__ import annotations

from collections.abc import Iterable

from pi.platform.kernel.errors import InvalidArgument, PermissionDenied

TRANSACTIONS_READ = "transactions:read"
TRANSACTIONS_WRITE = "transactions:write"
PAYMENTS_READ = "payments:read"
PAYMENTS_WRITE = "payments:write"
REFUNDS_WRITE = "refunds:write"
API_KEYS_READ = "api_keys:read"
API_KEYS_WRITE = "api_keys:write"

#: Every scope, in the order they are documented and listed.
ALL_SCOPES: tuple[str, ...] = (
    TRANSACTIONS_READ,
    TRANSACTIONS_WRITE,
    PAYMENTS_READ,
    PAYMENTS_WRITE,
    REFUNDS_WRITE,
    API_KEYS_READ,
    API_KEYS_WRITE,
)
FULL: frozenset[str] = frozenset(ALL_SCOPES)

_ORDER = {scope: position for position, scope in enumerate(ALL_SCOPES)}


def ordered(scopes: Iterable[str]) -> list[str]:
    """`scopes` in the documented order (stable output for APIs and tokens)."""
    return sorted(set(scopes), key=lambda scope: _ORDER.get(scope, len(_ORDER)))


def parse(values: Iterable[str], *, field: str) -> frozenset[str]:
    """Requested scopes: every value must be a known scope (INVALID_ARGUMENT otherwise)."""
    requested = list(values)
    unknown = [value for value in requested if value not in FULL]
    if unknown:
        raise InvalidArgument.field(
            field, f"has unknown scopes {unknown!r}; known scopes: {', '.join(ALL_SCOPES)}."
        )
    return frozenset(requested)


def require_within(requested: frozenset[str], held: frozenset[str], message: str) -> None:
    """PERMISSION_DENIED unless `requested` ⊆ `held`: nobody hands out more than it holds."""
    beyond = requested - held
    if beyond:
        raise PermissionDenied(
            f"{message} Not held: {', '.join(ordered(beyond))}.",
            reason="SCOPE_NOT_HELD",
            metadata={"scopes": " ".join(ordered(beyond))},
        )


def to_claim(scopes: Iterable[str]) -> str:
    """The `scope` claim of a token (RFC 8693: space-separated)."""
    return " ".join(ordered(scopes))


def from_claim(claim: object) -> frozenset[str] | None:
    """The scopes of a `scope` claim, or None if it is not a string. Unknown names are
    dropped: they grant nothing here (a newer issuer's scope an older verifier ignores)."""
    if not isinstance(claim, str):
        return None
    return frozenset(name for name in claim.split() if name in FULL)
