"""The transaction service's store on PostgreSQL: `tables` (the schema, as migration 0001
creates it), `rows` (rows <-> model), `statements` (the SQL, prebuilt), `repositories`
and `uow` (the unit of work the use cases get)."""
