"""The transaction service's unit of work on PostgreSQL (`pi.platform.db.unit_of_work`)."""

from __future__ import annotations

from pi.platform.db.database import Database
from pi.platform.db.errors import IntegrityError
from pi.platform.db.unit_of_work import PostgresUnitOfWork
from pi.platform.kernel.units import Mode
from pi.transactions.adapters.postgres.repositories import (
    PostgresIdempotencyKeys,
    PostgresMovements,
    PostgresTransactions,
)
from pi.transactions.app.ports import StorageRefused

__all__ = ["PostgresTransactionsUnit", "PostgresUnits"]


class PostgresTransactionsUnit(PostgresUnitOfWork):
    """`pi.transactions.app.ports.UnitOfWork` on the service's PostgreSQL schema."""

    def __init__(self, database: Database, mode: Mode = Mode.LOCKED) -> None:
        super().__init__(database, mode)
        self.transactions = PostgresTransactions(self)
        self.movements = PostgresMovements(self, self.transactions)
        self.idempotency = PostgresIdempotencyKeys(self)

    async def commit(self) -> None:
        try:
            await super().commit()
        except IntegrityError as error:
            raise StorageRefused("the database refused a write of the unit") from error


class PostgresUnits:
    """`pi.transactions.app.ports.UnitsOfWork` on `database`."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def __call__(self, mode: Mode = Mode.LOCKED) -> PostgresTransactionsUnit:
        return PostgresTransactionsUnit(self._database, mode)
