"""A lease on PostgreSQL: a session-level advisory lock, held on one connection of the
pool for as long as its holder leads.

Every replica of the payment service tries the same lock; the one that gets it runs the
background workers (`pi.payments.entrypoints.leader`). The lock belongs to the holder's
session, so it goes with it: a holder that dies (or loses its connection) frees it, and
PostgreSQL hands it to the next replica that tries. Nothing is written, so a lease costs
one connection and a `SELECT 1` per check.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator

import sqlalchemy as sa

from pi.platform.db.database import Database
from pi.platform.db.statements import Conn, Statement

__all__ = ["PostgresLease", "lease_key"]

_KEY = sa.bindparam("p_key", type_=sa.BigInteger())
_TRY_LOCK = Statement(sa.select(sa.func.pg_try_advisory_lock(_KEY).label("locked")))
_UNLOCK = Statement(sa.select(sa.func.pg_advisory_unlock(_KEY).label("unlocked")))
_ALIVE = Statement(sa.select(sa.literal_column("1").label("alive")))


def lease_key(name: str) -> int:
    """The advisory lock's key for a lease name: a stable signed 64-bit hash."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Held:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def alive(self) -> bool:
        """Whether the session holding the lock still answers."""
        try:
            await _ALIVE.one(self._conn)
        except Exception:
            return False
        return True


class PostgresLease:
    """The lease `name` on `database` (its schema's name makes it one per service)."""

    def __init__(self, database: Database, name: str) -> None:
        self._database = database
        self.name = name
        self._key = lease_key(name)

    @contextlib.asynccontextmanager
    async def try_hold(self) -> AsyncIterator[_Held | None]:
        """The lease for the block (None: another session holds it)."""
        async with self._database.reading() as conn:
            row = await _TRY_LOCK.one(conn, {"p_key": self._key})
            if not row.locked:
                yield None
                return
            try:
                yield _Held(conn)
            finally:
                # A broken session has lost the lock already; the pool discards it.
                with contextlib.suppress(Exception):
                    await _UNLOCK.one(conn, {"p_key": self._key})
