from pi.auth.adapters.postgres.tables import metadata
from pi.platform.db.migrations import run_env

run_env(metadata)
