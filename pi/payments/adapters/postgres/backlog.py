"""What waits in the payment service's database, sampled for the metrics.

Every few seconds (a background task of the bootstrap, never per request): undelivered
outbox movements and the age of the oldest, PROCESSING payments (the reconciler's
backlog) and the age of the oldest. Both read only the partial indexes of those rows,
which stay small while the service is healthy.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from pi.payments.adapters.postgres.tables import outbox, payments
from pi.platform.db.database import Database
from pi.platform.db.statements import Statement
from pi.platform.observability import metrics

__all__ = ["sample_backlog"]

_OUTBOX = Statement(
    sa.select(sa.func.count().label("count"), sa.func.min(outbox.c.create_time).label("oldest"))
    .select_from(outbox)
    .where(outbox.c.delivered_time.is_(None))
)
_PROCESSING = Statement(
    sa.select(sa.func.count().label("count"), sa.func.min(payments.c.create_time).label("oldest"))
    .select_from(payments)
    .where(payments.c.status == "PROCESSING")
)
# The dead-letter table ("Prove nothing is lost") adds its count here, as
# `metrics.outbox_dead_letters` (pi_outbox_dead_letters{outbox="movements"}).


def _age(oldest: datetime | None, now: datetime) -> float:
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


async def sample_backlog(database: Database, now: datetime) -> None:
    """Set the outbox and reconciler gauges from one look at the database."""
    async with database.reading() as conn:
        waiting = await _OUTBOX.one(conn)
        processing = await _PROCESSING.one(conn)
    metrics.outbox_undelivered.labels("movements").set(waiting.count)
    metrics.outbox_oldest_age.labels("movements").set(_age(waiting.oldest, now))
    metrics.reconciler_backlog.set(processing.count)
    metrics.reconciler_oldest_age.set(_age(processing.oldest, now))
