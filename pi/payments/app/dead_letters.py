"""ListDeadLetters and RetryDeadLetters: what an operator sees of, and does with, the
movements the transaction service kept refusing (`deliver_movements.py` moves them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pi.payments.app.common import id_problem
from pi.payments.app.ports import Clock, DeadLetter, Notify, Outbox
from pi.platform.kernel.errors import InvalidArgument, ValidationErrors
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.pages import page_size as parse_page_size
from pi.platform.kernel.principal import Principal, require_service

__all__ = ["MAX_RETRIED_TRANSACTIONS", "DeadLetterPage", "DeadLetters"]

log = logging.getLogger(__name__)

MAX_RETRIED_TRANSACTIONS = 1000
"""At most this many transactions per `retry` (payments.proto)."""


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    dead_letters: list[DeadLetter]
    next_page_token: str


class DeadLetters:
    def __init__(
        self, outbox: Outbox, page_tokens: PageToken, *, clock: Clock, notify: Notify
    ) -> None:
        self._outbox = outbox
        self._pages = page_tokens
        self._clock = clock
        self._notify = notify

    async def list(
        self, principal: Principal, *, page_size: int = 0, page_token: str = ""
    ) -> DeadLetterPage:
        """The dead letters, oldest first, in signed pages (service credential only)."""
        require_service(principal)
        size = parse_page_size(page_size)
        after: tuple[datetime, str] | None = None
        if page_token:
            position = self._pages.decode(page_token, {"list": "dead_letters"})
            try:
                after = (datetime.fromisoformat(position["t"]), str(position["id"]))
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument.field("page_token", "is not a valid page token.") from None
        rows = await self._outbox.dead_letters(size + 1, after=after)
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_token = self._pages.encode(
                {"t": last.dead_time.isoformat(), "id": last.movement_id}, {"list": "dead_letters"}
            )
        return DeadLetterPage(rows, next_token)

    async def retry(self, principal: Principal, transaction_ids: Sequence[str]) -> int:
        """Put the transactions' dead letters back in the outbox; how many went back."""
        require_service(principal)
        errors = ValidationErrors()
        if not transaction_ids:
            errors.add("transaction_ids", "is required")
        elif len(transaction_ids) > MAX_RETRIED_TRANSACTIONS:
            errors.add(
                "transaction_ids", f"must hold at most {MAX_RETRIED_TRANSACTIONS} identifiers"
            )
        for index, transaction_id in enumerate(transaction_ids[:MAX_RETRIED_TRANSACTIONS]):
            if (problem := id_problem(transaction_id)) is not None:
                errors.add(f"transaction_ids[{index}]", problem)
        errors.raise_if_any("The request has invalid fields.")
        retried = await self._outbox.retry_dead_letters(
            list(dict.fromkeys(transaction_ids)), self._clock()
        )
        if retried:
            self._notify()
        log.warning(
            "dead letters retried",
            extra={"transactions": len(transaction_ids), "movements": retried},
        )
        return retried
