"""Idempotent mutations (AIP-155): same key + same request → the first response, once.

Each service adds `idempotency_table(metadata)` to its own tables and wraps a mutating
use case in ONE database transaction:

    idem = Idempotency(table)                     # built once, in the composition root
    key = key_from(request.request_id, context)    # servicer (pi.platform.runtime.idempotency)
    fp = fingerprint(request)                      # servicer: the request minus request_id

    async with database.transaction() as conn:     # use case
        claim = await idem.claim(conn, merchant_id, "CreatePayment", key, fp)
        if claim.replay is not None:
            return decode(claim.replay)
        ...do the effect on `conn`...
        await idem.complete(conn, claim, encode(result))

`claim` inserts the key with INSERT .. ON CONFLICT DO NOTHING. A concurrent duplicate
blocks on the unique index until the first transaction ends: if it committed, the
duplicate sees its stored response and replays it; if it rolled back, the duplicate
claims the key and does the effect itself. Never two effects. (This relies on READ
COMMITTED, PostgreSQL's default.)

A different request under a used key → `AlreadyExists(reason="IDEMPOTENCY_KEY_REUSED")`.
If the effect raises, the transaction rolls back and the key is free again. A `None` key
(the client sent none) makes `claim`/`complete` no-ops, so use cases need no branch.

A use case that knows its response before doing the effect (e.g. "pending <id>" with an
id made up front) passes it to `claim(..., response=...)`: the key is claimed holding it,
one statement instead of claim + complete. That is as safe as completing later only
because both are in the effect's transaction: if the effect fails, the rollback removes
the claim and its response together.

A use case whose whole transaction goes in one `Batch` (see `pi.platform.db.statements`)
queues the claim with `queue_claim` instead: after the batch ran, `claimed` says whether
the key was free. If it was not, the use case rolls back and runs `claim` as above, in a
new transaction, for the replay (or the error) it gives.

A use case that can fail before claiming (e.g. on a remote lookup) calls `reject_reuse`
first, so that a reused key is reported as such rather than as the other failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    delete,
    select,
)
from sqlalchemy.dialects import postgresql

from pi.platform.db.batch import Deferred, StatementQueue
from pi.platform.db.statements import Conn, Record, Statement
from pi.platform.kernel.idempotency import (
    MAX_KEY_LENGTH,
    RETENTION,
    check_same_request,
    in_progress,
    replayed,
)


def idempotency_table(metadata: MetaData, name: str = "idempotency_keys") -> Table:
    """The table of claimed keys; primary key (scope, operation, key).

    `scope` is the merchant id (or "admin"/"service" for non-merchant callers).
    """
    return Table(
        name,
        metadata,
        Column("scope", String(64), primary_key=True),
        Column("operation", String(128), primary_key=True),
        Column("key", String(MAX_KEY_LENGTH), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("response", LargeBinary, nullable=True),
        Column("create_time", DateTime(timezone=True), nullable=False),
        Index(f"ix_{name}_create_time", "create_time"),
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of `Idempotency.claim`: a replay, or the right to do the effect."""

    scope: str
    operation: str
    key: str | None
    fingerprint: str
    replay: bytes | None = None


@dataclass(frozen=True, slots=True)
class QueuedClaim:
    """A claim queued in a `Batch` (`Idempotency.queue_claim`)."""

    inserted: Deferred[bool] | None  # None: no key, nothing to claim

    @property
    def claimed(self) -> bool:
        """Whether the key was free and is now this transaction's (read after the run)."""
        return self.inserted is None or self.inserted.value


class Idempotency:
    """Claim/complete idempotency keys in a service's `idempotency_table`."""

    def __init__(self, table: Table) -> None:
        self._table = table
        # Built once: claim/complete run on every mutating call, as prepared `Statement`s
        # (see pi.platform.db.statements).
        t = table
        self._claim = Statement(postgresql.insert(t).on_conflict_do_nothing().returning(t.c.key))
        same_key = and_(
            t.c.scope == bindparam("p_scope"),
            t.c.operation == bindparam("p_operation"),
            t.c.key == bindparam("p_key"),
        )
        self._stored = Statement(select(t.c.request_hash, t.c.response).where(same_key))
        self._complete = Statement(
            t.update()
            .where(same_key)
            .values(response=bindparam("p_response", type_=t.c.response.type))
        )
        self._purge = Statement(
            delete(t).where(t.c.create_time < bindparam("p_cutoff", type_=t.c.create_time.type))
        )
        self._lock_response = Statement(select(t.c.response).where(same_key).with_for_update())
        # The UPDATE locks the key's row, so of two requests finishing one key the second
        # waits and then finds the old response gone.
        self._replace = Statement(
            t.update()
            .where(same_key)
            .values(response=bindparam("p_response", type_=t.c.response.type))
            .where(t.c.response == bindparam("p_old", type_=t.c.response.type))
        )

    @property
    def table(self) -> Table:
        return self._table

    async def claim(
        self,
        conn: Conn,
        scope: str,
        operation: str,
        key: str | None,
        fingerprint: str,
        *,
        response: bytes | None = None,
    ) -> Claim:
        """Claim `key` inside the caller's transaction, or return the stored response.

        With `response`, the key is claimed already holding it (see the module
        docstring); `complete` may still replace it later in the same transaction.

        Raises `AlreadyExists(IDEMPOTENCY_KEY_REUSED)` if the key was used with a
        different request, `Aborted(IDEMPOTENCY_KEY_IN_USE)` if it was claimed but holds
        no response (an effect that committed without `complete`).
        """
        if key is None:
            return Claim(scope, operation, None, fingerprint)
        claimed = await self._claim.first(
            conn, _claim_values(scope, operation, key, fingerprint, response)
        )
        if claimed is not None:
            return Claim(scope, operation, key, fingerprint)
        row = await self._stored_row(conn, scope, operation, key)
        if row is None:
            # The conflicting claim vanished between the two statements (purged).
            raise in_progress()
        replay = replayed(row.request_hash, row.response, fingerprint, key)
        return Claim(scope, operation, key, fingerprint, replay=bytes(replay))

    def queue_claim(
        self,
        batch: StatementQueue,
        scope: str,
        operation: str,
        key: str | None,
        fingerprint: str,
        *,
        response: bytes,
    ) -> QueuedClaim:
        """`claim` with `response`, queued in `batch` (a `Batch` or a unit of work); if it
        turns out not `claimed`, roll back and `claim` again for the stored response."""
        if key is None:
            return QueuedClaim(None)
        return QueuedClaim(
            batch.hit(self._claim, _claim_values(scope, operation, key, fingerprint, response))
        )

    async def reject_reuse(
        self,
        conn: Conn,
        scope: str,
        operation: str,
        key: str | None,
        fingerprint: str,
    ) -> None:
        """Raise `AlreadyExists(IDEMPOTENCY_KEY_REUSED)` if `key` is stored for a
        different request; nothing if it is unclaimed or this request's. Reads only
        (any connection, autocommit is fine): it claims nothing."""
        if key is None:
            return
        row = await self._stored_row(conn, scope, operation, key)
        if row is not None:
            check_same_request(row.request_hash, fingerprint, key)

    async def _stored_row(self, conn: Conn, scope: str, operation: str, key: str) -> Record | None:
        params = {"p_scope": scope, "p_operation": operation, "p_key": key}
        return await self._stored.first(conn, params)

    async def complete(self, conn: Conn, claim: Claim, response: bytes) -> None:
        """Store the response for replays, in the same transaction as the effect."""
        if claim.key is None:
            return
        if claim.replay is not None:
            raise ValueError("cannot complete a replayed claim")
        await self._complete.execute(
            conn,
            {
                "p_scope": claim.scope,
                "p_operation": claim.operation,
                "p_key": claim.key,
                "p_response": response,
            },
        )

    async def locked_response(
        self, conn: Conn, scope: str, operation: str, key: str
    ) -> bytes | None:
        """The response stored under `key`, its row locked until the caller's transaction
        ends; None if the key is not stored or holds no response."""
        row = await self._lock_response.first(
            conn, {"p_scope": scope, "p_operation": operation, "p_key": key}
        )
        return None if row is None or row.response is None else bytes(row.response)

    def queue_replace(
        self, batch: StatementQueue, scope: str, operation: str, key: str, old: bytes, new: bytes
    ) -> Deferred[bool]:
        """Queue in `batch` the replacement of the response stored under `key` by `new`,
        made only if it still is `old` (a use case that decided without locking the key,
        e.g. on the response it claimed the key with); whether it was."""
        return batch.hit(
            self._replace,
            {
                "p_scope": scope,
                "p_operation": operation,
                "p_key": key,
                "p_old": old,
                "p_response": new,
            },
        )

    async def purge(self, conn: Conn, older_than: timedelta = RETENTION) -> int:
        """Delete keys older than `older_than` (≥ 24 h); returns how many."""
        if older_than < RETENTION:
            raise ValueError("idempotency keys are kept at least 24 hours")
        return await self._purge.execute(conn, {"p_cutoff": datetime.now(UTC) - older_than})


def _claim_values(
    scope: str, operation: str, key: str, fingerprint: str, response: bytes | None
) -> dict[str, Any]:
    return {
        "scope": scope,
        "operation": operation,
        "key": key,
        "request_hash": fingerprint,
        "response": response,
        "create_time": datetime.now(UTC),
    }
