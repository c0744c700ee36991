"""Alembic environment of the payment service; run it with `python -m pi.payments migrate`."""

from pi.payments.adapters.postgres.tables import metadata
from pi.platform.db.migrations import run_env

run_env(metadata)
