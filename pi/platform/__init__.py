"""Pi Platform's shared code: what every service uses and no service owns.

- `kernel`: errors, money, ids, free text, pagination, the caller (`Principal`);
  standard library only, so domain and use-case code may import it.
- `ledger`: the movements contract between payments and transactions.
- `runtime`: the gRPC server, interceptors, channels, status mapping, logging, the
  command line and what every composition root wires the same way.
- `db`: PostgreSQL: the pool and units of work, prepared statements, migrations,
  idempotency keys, and the embedded server `make run` and the tests start.
- `security`: access tokens and their revocation, column encryption and secret hashing.
- `cache`: the cache (Redis or in process) behind revocations and rate limits.
- `config`: process settings from the environment.

Import from the modules themselves (`from pi.platform.kernel.errors import NotFound`).
"""
