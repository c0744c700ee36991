"""PostgreSQL: the connection pool and units of work, prepared statements, migrations, idempotency."""
