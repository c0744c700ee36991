from pi.platform.db.migrations import run_env
from pi.transactions.adapters.postgres.tables import metadata

run_env(metadata)
