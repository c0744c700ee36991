"""The auth unit of work on PostgreSQL: tables, row mapping, repositories."""
