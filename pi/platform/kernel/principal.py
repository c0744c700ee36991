"""Who is calling: set per call by `AuthInterceptor`, read by servicers with `principal_of`."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Literal

from pi.platform.kernel.errors import PermissionDenied, Unauthenticated
from pi.platform.kernel.scopes import FULL

PrincipalKind = Literal["merchant", "admin", "service"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `merchant_id` is set only for merchants (the token `sub`).

    `scopes` is what a merchant's token may do (`pi.platform.kernel.scopes`); without it a
    merchant principal holds every scope (tests, and tokens issued before scopes existed,
    which expire within 15 minutes of an upgrade). Admin and service callers have none:
    their calls are allowed by kind, not by scope.
    """

    kind: PrincipalKind
    merchant_id: str | None = None
    token_id: str | None = None
    expires_at: int | None = None
    scopes: frozenset[str] = frozenset()
    issued_at: int | None = None

    @classmethod
    def merchant(
        cls,
        merchant_id: str,
        *,
        token_id: str | None = None,
        expires_at: int | None = None,
        scopes: frozenset[str] | None = None,
        issued_at: int | None = None,
    ) -> Principal:
        held = FULL if scopes is None else scopes
        return cls("merchant", merchant_id, token_id, expires_at, held, issued_at)

    def holds(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def admin(cls) -> Principal:
        return cls("admin")

    @classmethod
    def service(cls) -> Principal:
        return cls("service")


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "pi_principal", default=None
)


def principal_of(context: object = None) -> Principal:
    """The caller of the current RPC; `Unauthenticated` on a method that took no token.

    `context` (the servicer context) is accepted for readability at call sites; the
    principal lives in a contextvar that the auth interceptor sets for this call.
    """
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("This call requires credentials.", reason="TOKEN_MISSING")
    return principal


def current_principal() -> Principal | None:
    return _current.get()


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    """Bind the principal for the current task; undo with `reset_principal(token)`."""
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


def require_merchant(principal: Principal) -> str:
    """The merchant id of a merchant caller; `PermissionDenied` for anyone else."""
    if principal.kind != "merchant" or not principal.merchant_id:
        raise PermissionDenied("This call requires a merchant token.")
    return principal.merchant_id


def require_admin(principal: Principal) -> Principal:
    if principal.kind != "admin":
        raise PermissionDenied("This call requires the admin credential.")
    return principal


def require_service(principal: Principal) -> Principal:
    if principal.kind != "service":
        raise PermissionDenied("This call requires the service credential.")
    return principal
