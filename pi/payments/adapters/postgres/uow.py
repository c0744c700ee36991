"""The payment service's unit of work on PostgreSQL (see `pi.payments.app.ports` for what
the use cases see, and `pi.platform.db.unit_of_work` for the modes)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from pi.payments.adapters.postgres.idempotency import PostgresIdempotencyKeys
from pi.payments.adapters.postgres.payments import PostgresPayments, PostgresRefunds
from pi.payments.adapters.postgres.refs import PostgresRefs
from pi.payments.adapters.postgres.tables import idempotency_keys
from pi.platform.db.database import Database
from pi.platform.db.idempotency import Idempotency
from pi.platform.db.statements import Conn
from pi.platform.db.unit_of_work import PostgresUnitOfWork
from pi.platform.kernel.units import Conflict, Mode

__all__ = ["PostgresPaymentsUnit", "PostgresUnits"]


class PostgresPaymentsUnit(PostgresUnitOfWork):
    def __init__(
        self, database: Database, mode: Mode = Mode.LOCKED, *, idempotency: Idempotency
    ) -> None:
        super().__init__(database, mode)
        self._db = database
        self.refs = PostgresRefs(self)
        self.payments = PostgresPayments(self)
        self.refunds = PostgresRefunds(self)
        self.idempotency = PostgresIdempotencyKeys(self, idempotency)

    def confirm_reads(self) -> None:
        if self.mode is Mode.OPTIMISTIC:
            raise Conflict("a decision that writes nothing is only final under locks")

    def reading(self) -> AbstractAsyncContextManager[Conn]:
        """An autocommit connection, for reads such helpers make outside the unit."""
        return self._db.reading()


class PostgresUnits:
    """The unit-of-work factory of the payment service on `database`."""

    def __init__(self, database: Database, idempotency: Idempotency | None = None) -> None:
        self._database = database
        self.idempotency = idempotency or Idempotency(idempotency_keys)

    def __call__(self, mode: Mode = Mode.LOCKED) -> PostgresPaymentsUnit:
        return PostgresPaymentsUnit(self._database, mode, idempotency=self.idempotency)
