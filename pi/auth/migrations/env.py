from pi.auth.store import metadata
from pi.platform.db.migrations import run_env

run_env(metadata)
