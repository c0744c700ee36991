"""PostgreSQL: the pool and units of work, prepared statements, migrations, idempotency."""
