"""Reading transactions: GetTransaction and ListTransactions (a merchant's own), and
LookupTransaction (the payment service's, by merchant).

A merchant only ever sees its own transactions: another merchant's id answers NOT_FOUND,
exactly like an unknown one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pi.platform.kernel import pages
from pi.platform.kernel.errors import InvalidArgument, ValidationErrors
from pi.platform.kernel.ids import is_valid_id
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.principal import Principal, require_merchant, require_service
from pi.platform.kernel.units import Mode
from pi.transactions.app.ports import Cursor, ListQuery, UnitOfWork, UnitsOfWork
from pi.transactions.app.replays import from_micros, micros
from pi.transactions.domain import (
    ID_PREFIX,
    Transaction,
    TransactionStatus,
    transaction_not_found,
)

__all__ = [
    "GetTransaction",
    "ListTransactions",
    "LookupTransaction",
    "TransactionPage",
    "find_transaction",
    "require_id",
]


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """One page of `ListTransactions`; `next_page_token` is empty on the last page."""

    transactions: list[Transaction]
    next_page_token: str


async def find_transaction(uow: UnitOfWork, merchant_id: str, transaction_id: str) -> Transaction:
    """The merchant's transaction, or NotFound. An id that cannot be one is not looked
    up: the same answer, with no database work."""
    transaction = None
    if is_valid_id(transaction_id, ID_PREFIX):
        transaction = await uow.transactions.get(merchant_id, transaction_id)
    if transaction is None:
        raise transaction_not_found(transaction_id)
    return transaction


def require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument.field(field, "is required")


class GetTransaction:
    def __init__(self, units: UnitsOfWork) -> None:
        self._units = units

    async def __call__(self, principal: Principal, transaction_id: str) -> Transaction:
        merchant_id = require_merchant(principal)
        require_id(transaction_id, "id")
        async with self._units(Mode.READ) as uow:
            return await find_transaction(uow, merchant_id, transaction_id)


class ListTransactions:
    """The merchant's transactions, newest first, by keyset pagination.

    The page token is the (create_time, id) of the last row returned, signed and bound
    to the filters; rows created after the first page never shift later pages, so
    paging never repeats or skips a row.
    """

    def __init__(self, units: UnitsOfWork, page_tokens: PageToken) -> None:
        self._units = units
        self._page_tokens = page_tokens

    async def __call__(
        self,
        principal: Principal,
        *,
        page_size: int = 0,
        page_token: str = "",
        status: TransactionStatus | None = None,
        create_time_start: datetime | None = None,
        create_time_end: datetime | None = None,
    ) -> TransactionPage:
        merchant_id = require_merchant(principal)
        size = pages.page_size(page_size)
        if (
            create_time_start is not None
            and create_time_end is not None
            and create_time_end < create_time_start
        ):
            raise InvalidArgument.field("create_time_end", "must not be before create_time_start")
        filters = {
            "merchant_id": merchant_id,
            "status": None if status is None else status.value,
            "create_time_start": None if create_time_start is None else micros(create_time_start),
            "create_time_end": None if create_time_end is None else micros(create_time_end),
        }
        after = None
        if page_token:
            after = _cursor(self._page_tokens.decode(page_token, filters))
        query = ListQuery(
            merchant_id=merchant_id,
            limit=size + 1,
            status=status,
            create_time_start=create_time_start,
            create_time_end=create_time_end,
            after=after,
        )
        async with self._units(Mode.READ) as uow:
            rows = await uow.transactions.list(query)
        next_page_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_page_token = self._page_tokens.encode(
                {"t": micros(last.create_time), "i": last.id}, filters
            )
        return TransactionPage(rows, next_page_token)


class LookupTransaction:
    """The transaction if `merchant_id` owns it, for the payment service."""

    def __init__(self, units: UnitsOfWork) -> None:
        self._units = units

    async def __call__(
        self, principal: Principal, merchant_id: str, transaction_id: str
    ) -> Transaction:
        require_service(principal)
        errors = ValidationErrors()
        if not merchant_id:
            errors.add("merchant_id", "is required")
        if not transaction_id:
            errors.add("transaction_id", "is required")
        errors.raise_if_any()
        async with self._units(Mode.READ) as uow:
            return await find_transaction(uow, merchant_id, transaction_id)


def _cursor(position: Mapping[str, Any]) -> Cursor:
    at, last_id = position.get("t"), position.get("i")
    if not isinstance(at, int) or not isinstance(last_id, str):
        raise InvalidArgument.field("page_token", "is not a valid page token.")
    return Cursor(create_time=from_micros(at), id=last_id)
