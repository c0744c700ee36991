"""The scope each RPC needs from a merchant's token: the one table, checked in one place.

`AuthInterceptor` calls `check_scope(method, principal)` for every merchant call, before
the servicer runs. A method absent from the table is refused to merchants (fail closed):
an RPC added without deciding its scope cannot be called with a token at all, and
`tests/unit/platform/test_platform_scopes.py` fails until it is listed. Admin and service
callers are not scoped: their methods check their kind (`require_admin`, `require_service`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pi.platform.kernel import scopes
from pi.platform.kernel.errors import PermissionDenied
from pi.platform.kernel.principal import Principal

#: Any merchant token may call it; the use case decides what the token may touch
#: (RevokeToken: its own token always, others with `api_keys:write`).
ANY_MERCHANT = ""

_AUTH = "/pi.auth.v1.AuthService/"
_TRANSACTIONS = "/pi.transactions.v1.TransactionService/"
_PAYMENTS = "/pi.payments.v1.PaymentService/"

REQUIRED_SCOPE: Mapping[str, str] = MappingProxyType(
    {
        _AUTH + "RevokeToken": ANY_MERCHANT,
        _AUTH + "CreateApiKey": scopes.API_KEYS_WRITE,
        _AUTH + "ListApiKeys": scopes.API_KEYS_READ,
        _AUTH + "RevokeApiKey": scopes.API_KEYS_WRITE,
        _TRANSACTIONS + "CreateTransaction": scopes.TRANSACTIONS_WRITE,
        _TRANSACTIONS + "GetTransaction": scopes.TRANSACTIONS_READ,
        _TRANSACTIONS + "ListTransactions": scopes.TRANSACTIONS_READ,
        _TRANSACTIONS + "CancelTransaction": scopes.TRANSACTIONS_WRITE,
        _PAYMENTS + "CreatePayment": scopes.PAYMENTS_WRITE,
        _PAYMENTS + "GetPayment": scopes.PAYMENTS_READ,
        _PAYMENTS + "ListPayments": scopes.PAYMENTS_READ,
        _PAYMENTS + "CapturePayment": scopes.PAYMENTS_WRITE,
        _PAYMENTS + "CancelPayment": scopes.PAYMENTS_WRITE,
        _PAYMENTS + "RefundPayment": scopes.REFUNDS_WRITE,
    }
)
"""Full gRPC method name → the scope a merchant token needs to call it."""

#: Methods that take the admin or service credential, never a merchant token: their use
#: cases refuse merchants (`require_admin`, `require_service`) with PERMISSION_DENIED.
NOT_FOR_MERCHANTS: frozenset[str] = frozenset(
    {
        _AUTH + "CreateMerchant",
        "/pi.auth.v1.AuthInternalService/ListRevokedTokens",
        "/pi.transactions.v1.TransactionLedgerService/LookupTransaction",
        "/pi.transactions.v1.TransactionLedgerService/ApplyMovement",
        "/pi.transactions.v1.TransactionLedgerService/ApplyMovements",
        "/pi.payments.v1.PaymentLedgerService/CloseTransaction",
        "/pi.payments.v1.PaymentLedgerService/RegisterTransactions",
        "/pi.payments.v1.PaymentLedgerService/ListDeadLetters",
        "/pi.payments.v1.PaymentLedgerService/RetryDeadLetters",
    }
)


def check_scope(method: str, principal: Principal) -> None:
    """PERMISSION_DENIED (reason SCOPE_MISSING) unless a merchant's token may call `method`."""
    if principal.kind != "merchant" or method in NOT_FOR_MERCHANTS:
        return
    needed = REQUIRED_SCOPE.get(method)
    if needed is None:
        raise PermissionDenied(
            "This call is not available to merchant tokens.", reason="SCOPE_MISSING"
        )
    if needed and needed not in principal.scopes:
        raise PermissionDenied(
            f"This call needs an API key with the {needed!r} scope.",
            reason="SCOPE_MISSING",
            metadata={"required_scope": needed},
        )
