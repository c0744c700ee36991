"""Who may call what inside the mesh: the caller allow-list, enforced in one place.

`ALLOWED_CALLERS` names, for every internal RPC and for the admin API, the mesh
identities that may call it; a caller is known by the SPIFFE ID in its client
certificate (`pi.platform.security.mesh.identity_of`), never by a shared token. A method
of an internal service missing from the table is refused to everyone (a new internal RPC
is closed until someone decides who calls it).

`CallerInterceptor` enforces it. Install it before `AuthInterceptor` (the services do, in
`pi.platform.runtime.wiring`, whenever mutual TLS is configured):

- a call by an identity not allowed → PERMISSION_DENIED (reason CALLER_NOT_ALLOWED),
  before the servicer or the token check runs;
- an allowed service identity becomes the call's `Principal.service()`, which the auth
  interceptor keeps (the service sends no token);
- an allowed `admin` identity still needs the admin token for the admin API: the
  certificate says where the call comes from (the operator's machine or job), the token
  who may act. On an internal service's method (the dead letters), which only services
  and the operator ever call, the operator's certificate acts as `Principal.service()`:
  no service but auth holds the admin token.

Public methods (merchant calls relayed by the edge, health, reflection) are open to any
peer with a valid mesh certificate; the TLS handshake already refused everyone else.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc

from pi.platform.kernel.errors import PermissionDenied
from pi.platform.kernel.principal import Principal, reset_principal, set_principal
from pi.platform.runtime.interceptors import Continuation, Handler, _replace_unary
from pi.platform.runtime.status import abort_with
from pi.platform.security.mesh import identity_of

ADMIN = "admin"
"""The operator's identity: a short-lived certificate for whoever runs the admin API."""
SERVICES = frozenset({"auth", "transactions", "payments"})
"""Identities that act as `Principal.service()` when allowed."""

ALLOWED_CALLERS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # The admin API: never through the public edge (it routes no admin method).
        "/pi.auth.v1.AuthService/CreateMerchant": frozenset({ADMIN}),
        # Revocations feed every verifier of merchant tokens.
        "/pi.auth.v1.AuthInternalService/ListRevokedTokens": frozenset(
            {"transactions", "payments"}
        ),
        # Payments reads the transaction it charges and delivers the money it moved.
        "/pi.transactions.v1.TransactionLedgerService/LookupTransaction": frozenset({"payments"}),
        "/pi.transactions.v1.TransactionLedgerService/ApplyMovement": frozenset({"payments"}),
        "/pi.transactions.v1.TransactionLedgerService/ApplyMovements": frozenset({"payments"}),
        # Transactions closes a cancelled transaction's payments and registers new ones.
        "/pi.payments.v1.PaymentLedgerService/CloseTransaction": frozenset({"transactions"}),
        "/pi.payments.v1.PaymentLedgerService/RegisterTransactions": frozenset({"transactions"}),
        # Movements the transaction service kept refusing: the operator lists and retries
        # them (docs/state-machines.md, dead letters).
        "/pi.payments.v1.PaymentLedgerService/ListDeadLetters": frozenset({ADMIN}),
        "/pi.payments.v1.PaymentLedgerService/RetryDeadLetters": frozenset({ADMIN}),
    }
)

INTERNAL_SERVICES = (
    "pi.auth.v1.AuthInternalService",
    "pi.transactions.v1.TransactionLedgerService",
    "pi.payments.v1.PaymentLedgerService",
)
"""Services only other services call: every method of theirs is on the allow-list."""

_NOBODY: frozenset[str] = frozenset()
_INTERNAL_PREFIXES = tuple(f"/{name}/" for name in INTERNAL_SERVICES)


def allowed_callers(method: str) -> frozenset[str] | None:
    """The identities allowed to call `method`, or None when any mesh peer may."""
    allowed = ALLOWED_CALLERS.get(method)
    if allowed is not None:
        return allowed
    return _NOBODY if method.startswith(_INTERNAL_PREFIXES) else None


class CallerInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose certificate's identity is not allowed for the method."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        allowed = allowed_callers(method)
        if handler is None or handler.unary_unary is None or allowed is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _replace_unary(handler, _checked(handler.unary_unary, method, allowed))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _checked(behavior: Any, method: str, allowed: frozenset[str]) -> Any:
    internal = method.startswith(_INTERNAL_PREFIXES)

    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = identity_of(context.auth_context())
        if caller not in allowed:
            await abort_with(
                context,
                PermissionDenied(
                    f"{caller or 'A caller without a mesh identity'} may not call {method}.",
                    reason="CALLER_NOT_ALLOWED",
                ),
            )
        if caller not in SERVICES and not (caller == ADMIN and internal):
            return await behavior(request, context)
        token = set_principal(Principal.service())
        try:
            return await behavior(request, context)
        finally:
            reset_principal(token)

    return checked
