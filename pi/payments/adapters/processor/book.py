"""The sandbox processor's own ledger: what it authorized, captured, voided and refunded.

A real processor keeps its books apart from ours; the sandbox does too, so that a fault
run (`make chaos`) can compare the processor's money with the payment service's. Two
books, one interface (`SandboxBook`):

- `MemoryBook` (the default): dictionaries in the payment process. Forgotten on restart,
  like a processor that never received earlier payments.
- `PostgresBook` (`PI_SANDBOX_LEDGER=postgres`): the schema `sandbox_processor` in the
  service's database, written on a pool of its own in autocommit, never inside a unit of
  work of the payment service. What it answered is committed before the answer returns,
  so it survives a SIGKILL of the payment process, and every replica shares it, as they
  would share one real processor. Its tables are created on first use (they are the
  processor's, not the service's: no Alembic migration).

Each operation (capture, void, refund) is recorded once per (kind, idempotency key): a
repeat answers what the first answered. Per payment, `apply` is atomic: the decision is
taken on the authorization as it is, with a lock that serialises operations of one
payment across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pi.payments.domain import ConnectorResult, FailureReason, ProcessorOutcome
from pi.platform.db.database import Database, open_database_for

__all__ = [
    "SCHEMA",
    "Authorization",
    "Decide",
    "MemoryBook",
    "PostgresBook",
    "SandboxBook",
    "open_postgres_book",
]

SCHEMA = "sandbox_processor"
POOL_SIZE = 4


@dataclass(slots=True)
class Authorization:
    """One payment at the processor: what was held (`amount`, 0 if nothing was), what of
    it was captured and refunded, and whether the hold was voided."""

    reference: str
    final: ConnectorResult | None  # None while a PENDING method has not settled
    settles_at: datetime
    amount: int
    capture: bool
    captured: int = 0
    refunded: int = 0
    voided: bool = False


Decide = Callable[[Authorization | None], ConnectorResult]
"""Decides an operation on the payment's authorization (None: never authorized), changing
it in place when it agrees; returns the answer."""


class SandboxBook(Protocol):
    async def authorization(self, payment_id: str) -> Authorization | None: ...

    async def add_authorization(
        self, payment_id: str, merchant_id: str, authorization: Authorization
    ) -> Authorization:
        """Keep `authorization` unless the payment has one already; the one kept."""
        ...

    async def save_authorization(self, payment_id: str, authorization: Authorization) -> None:
        """Write back an authorization that settled (PENDING → final)."""
        ...

    async def apply(
        self, kind: str, key: str, payment_id: str, amount: int, decide: Decide
    ) -> ConnectorResult:
        """The answer recorded for (kind, key), else `decide`'s, recorded with the change
        it made to the authorization, atomically."""
        ...

    async def close(self) -> None: ...


class MemoryBook:
    def __init__(self) -> None:
        self._authorizations: dict[str, Authorization] = {}
        self._operations: dict[tuple[str, str], ConnectorResult] = {}

    async def authorization(self, payment_id: str) -> Authorization | None:
        return self._authorizations.get(payment_id)

    async def add_authorization(
        self, payment_id: str, merchant_id: str, authorization: Authorization
    ) -> Authorization:
        return self._authorizations.setdefault(payment_id, authorization)

    async def save_authorization(self, payment_id: str, authorization: Authorization) -> None:
        self._authorizations[payment_id] = authorization

    async def apply(
        self, kind: str, key: str, payment_id: str, amount: int, decide: Decide
    ) -> ConnectorResult:
        # No await between reading and writing: atomic on the event loop.
        known = self._operations.get((kind, key))
        if known is None:
            known = self._operations[(kind, key)] = decide(self._authorizations.get(payment_id))
        return known

    async def close(self) -> None:
        return None


def _statements(schema: str) -> dict[str, str]:
    """The book's SQL on `schema` (a plain identifier, checked by `open_database_for`)."""
    columns = (
        "reference, outcome, failure_reason, settles_at, amount, capture, captured, refunded,"
        " voided"
    )
    select = f"SELECT {columns} FROM {schema}.authorizations WHERE payment_id = %s"
    return {
        "create": f"""
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.authorizations (
    payment_id text PRIMARY KEY,
    merchant_id text NOT NULL,
    reference text NOT NULL,
    outcome text NOT NULL,
    failure_reason text,
    settles_at timestamptz NOT NULL,
    amount bigint NOT NULL,
    capture boolean NOT NULL,
    captured bigint NOT NULL DEFAULT 0,
    refunded bigint NOT NULL DEFAULT 0,
    voided boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    CHECK (0 <= refunded AND refunded <= captured AND captured <= amount)
);
CREATE TABLE IF NOT EXISTS {schema}.operations (
    kind text NOT NULL,
    idempotency_key text NOT NULL,
    payment_id text NOT NULL,
    amount bigint NOT NULL,
    outcome text NOT NULL,
    failure_reason text,
    reference text,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, idempotency_key)
);
""",
        "select": select,
        "select_locked": select + " FOR UPDATE",
        "insert": (
            f"INSERT INTO {schema}.authorizations (payment_id, merchant_id, {columns})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (payment_id) DO NOTHING"
        ),
        "update": (
            f"UPDATE {schema}.authorizations SET outcome = %s, failure_reason = %s,"
            " captured = %s, refunded = %s, voided = %s, update_time = now()"
            " WHERE payment_id = %s"
        ),
        "select_operation": (
            f"SELECT outcome, failure_reason, reference FROM {schema}.operations"
            " WHERE kind = %s AND idempotency_key = %s"
        ),
        "insert_operation": (
            f"INSERT INTO {schema}.operations"
            " (kind, idempotency_key, payment_id, amount, outcome, failure_reason, reference)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ),
        # Serialise operations of one payment across processes, also before it has a row.
        "lock": f"SELECT pg_advisory_xact_lock(hashtextextended('{schema}:' || %s, 0))",
        "setup_lock": f"SELECT pg_advisory_xact_lock(hashtextextended('{schema}:schema', 0))",
    }


def _result(outcome: str, reason: str | None, reference: str | None) -> ConnectorResult:
    return ConnectorResult(
        ProcessorOutcome(outcome), reference, FailureReason(reason) if reason else None
    )


def _final_columns(auth: Authorization) -> tuple[str, str | None]:
    if auth.final is None:
        return ProcessorOutcome.PENDING.value, None
    reason = auth.final.failure_reason
    return auth.final.outcome.value, reason.value if reason else None


def _authorization(row: tuple[Any, ...]) -> Authorization:
    reference, outcome, reason, settles_at, amount, capture, captured, refunded, voided = row
    final = None if outcome == ProcessorOutcome.PENDING else _result(outcome, reason, reference)
    return Authorization(
        reference=reference,
        final=final,
        settles_at=settles_at,
        amount=amount,
        capture=capture,
        captured=captured,
        refunded=refunded,
        voided=voided,
    )


class PostgresBook:
    """The book in PostgreSQL (see the module docstring); build it with
    `open_postgres_book`."""

    def __init__(self, database: Database, schema: str = SCHEMA) -> None:
        self._database = database
        self._sql = _statements(schema)

    async def create_tables(self) -> None:
        async with self._database.transaction() as conn:
            await conn.execute(self._sql["setup_lock"])  # replicas starting together
            await conn.execute(self._sql["create"])

    async def authorization(self, payment_id: str) -> Authorization | None:
        async with self._database.reading() as conn:
            row = await (await conn.execute(self._sql["select"], (payment_id,))).fetchone()
        return None if row is None else _authorization(row)

    async def add_authorization(
        self, payment_id: str, merchant_id: str, authorization: Authorization
    ) -> Authorization:
        outcome, reason = _final_columns(authorization)
        a = authorization
        async with self._database.transaction() as conn:
            await conn.execute(
                self._sql["insert"],
                (payment_id, merchant_id, a.reference, outcome, reason, a.settles_at, a.amount,
                 a.capture, a.captured, a.refunded, a.voided),
            )  # fmt: skip
            row = await (await conn.execute(self._sql["select"], (payment_id,))).fetchone()
        assert row is not None  # inserted, or kept from the first
        return _authorization(row)

    async def save_authorization(self, payment_id: str, authorization: Authorization) -> None:
        async with self._database.transaction() as conn:
            await conn.execute(self._sql["lock"], (payment_id,))
            await self._update(conn, payment_id, authorization)

    async def apply(
        self, kind: str, key: str, payment_id: str, amount: int, decide: Decide
    ) -> ConnectorResult:
        async with self._database.transaction() as conn:
            await conn.execute(self._sql["lock"], (payment_id,))
            found = await conn.execute(self._sql["select_operation"], (kind, key))
            known = await found.fetchone()
            if known is not None:
                return _result(*known)
            row = await (await conn.execute(self._sql["select_locked"], (payment_id,))).fetchone()
            authorization = None if row is None else _authorization(row)
            result = decide(authorization)
            if authorization is not None:
                await self._update(conn, payment_id, authorization)
            reason = result.failure_reason.value if result.failure_reason else None
            await conn.execute(
                self._sql["insert_operation"],
                (kind, key, payment_id, amount, result.outcome.value, reason, result.reference),
            )
        return result

    async def close(self) -> None:
        await self._database.close()

    async def _update(self, conn: Any, payment_id: str, auth: Authorization) -> None:
        outcome, reason = _final_columns(auth)
        await conn.execute(
            self._sql["update"],
            (outcome, reason, auth.captured, auth.refunded, auth.voided, payment_id),
        )


async def open_postgres_book(database_url: str, schema: str = SCHEMA) -> PostgresBook:
    """The book in `database_url`'s database, its tables created if missing."""
    database = await open_database_for(database_url, schema, pool_size=POOL_SIZE)
    book = PostgresBook(database, schema)
    try:
        await book.create_tables()
    except BaseException:
        await book.close()
        raise
    return book
