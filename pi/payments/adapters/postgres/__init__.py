"""The payment service on PostgreSQL: its tables, rows, unit of work and repositories,
and the outbox's delivery queue."""
