from pi.platform.db.migrations import run_env
from pi.transactions.store import metadata

run_env(metadata)
