"""GetPayment and ListPayments: the merchant's payments as committed (no locks)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pi.payments.app.common import id_problem, payment_not_found
from pi.payments.app.ports import UnitsOfWork
from pi.payments.domain import Payment
from pi.platform.kernel.errors import InvalidArgument
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.pages import page_size as parse_page_size
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.units import Mode

__all__ = ["GetPayment", "ListPayments", "PaymentPage"]


@dataclass(frozen=True, slots=True)
class PaymentPage:
    payments: list[Payment]
    next_page_token: str


class GetPayment:
    def __init__(self, units: UnitsOfWork) -> None:
        self._units = units

    async def __call__(self, principal: Principal, payment_id: str) -> Payment:
        merchant_id = require_merchant(principal)
        if not payment_id:
            raise InvalidArgument.field("id", "is required")
        if id_problem(payment_id) is not None:  # no payment has it (and NUL breaks SQL text)
            raise payment_not_found()
        async with self._units(Mode.READ) as unit:
            payment = await unit.payments.find(payment_id, merchant_id)
        if payment is None:
            raise payment_not_found()
        return payment


class ListPayments:
    """The merchant's payments (of one transaction, if given), newest first, in pages
    whose tokens are signed and bound to the filters."""

    def __init__(self, units: UnitsOfWork, page_tokens: PageToken) -> None:
        self._units = units
        self._pages = page_tokens

    async def __call__(
        self,
        principal: Principal,
        *,
        transaction_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> PaymentPage:
        merchant_id = require_merchant(principal)
        size = parse_page_size(page_size)
        if transaction_id and (problem := id_problem(transaction_id)) is not None:
            raise InvalidArgument.field("transaction_id", problem)
        filters = {"merchant_id": merchant_id, "transaction_id": transaction_id}
        after: tuple[datetime, str] | None = None
        if page_token:
            position = self._pages.decode(page_token, filters)
            try:
                after = (datetime.fromisoformat(position["t"]), str(position["id"]))
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument.field("page_token", "is not a valid page token.") from None
        async with self._units(Mode.READ) as unit:
            rows = await unit.payments.of_merchant(
                merchant_id, transaction_id=transaction_id or None, after=after, limit=size + 1
            )
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_token = self._pages.encode(
                {"t": last.create_time.isoformat(), "id": last.id}, filters
            )
        return PaymentPage(payments=rows, next_page_token=next_token)
