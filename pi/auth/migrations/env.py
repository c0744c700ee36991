from pi.auth.store import metadata
from pi.platform.migrations import run_env

run_env(metadata)
