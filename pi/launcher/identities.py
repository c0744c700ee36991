"""Least privilege in `make run`: each process gets its own identity and only its secrets.

- A mesh certificate per service, for Envoy (`edge`) and for the operator (`admin`, what
  creates the demo merchant), issued by the dev CA into `<var>/certs/mesh/`
  (`pi.edge.identities`).
- Its own master keys: `PI_MASTER_KEYS_<SERVICE>` from the dev secrets becomes that
  service's `PI_MASTER_KEYS`, so payments holds nothing that decrypts auth's signing
  keys. (A var dir made before the split has one `PI_MASTER_KEYS`, which every service
  keeps, so its data stays readable; delete `var/` for split keys.)
- The admin token goes to auth only; no service token at all (mTLS says who calls).
- On the embedded PostgreSQL, a database role per service: `migrate` runs as the owner
  and creates `pi_<service>` (PI_DB_SERVICE_ROLE), the service logs in as it. With a
  DATABASE_URL of your own, every process uses it as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from pi.edge.identities import MESH_IDENTITIES, Identity, ensure_identities, identity_paths
from pi.launcher.options import LaunchOptions
from pi.platform.db.roles import role_url

MESH_NAMES = MESH_IDENTITIES
"""Every identity `make run` issues: the services, Envoy, and the operator."""

_SECRET_PREFIXES = (
    "PI_MASTER_KEYS",
    "PI_ADMIN_TOKEN",
    "PI_SERVICE_TOKEN",
    "PI_TLS_",
    "PI_CARD_FINGERPRINT_KEY",
)


def certs_dir(options: LaunchOptions) -> Path:
    return options.var / "certs"


def ensure_mesh(options: LaunchOptions) -> Mapping[str, Identity]:
    """Issue (or reuse) every identity of the mesh."""
    return ensure_identities(certs_dir(options), MESH_NAMES)


def identity(options: LaunchOptions, name: str) -> Identity:
    return identity_paths(certs_dir(options), name)


def master_keys_variable(service: str) -> str:
    return f"PI_MASTER_KEYS_{service.upper()}"


def db_role(service: str) -> str:
    return f"pi_{service}"


def service_env(
    options: LaunchOptions, env: Mapping[str, str], service: str, *, migrate: bool = False
) -> dict[str, str]:
    """`env` without anyone's secrets, plus what `service` alone needs (for its
    `migrate` step with `migrate=True`: the owner's database URL and the role to grant)."""
    own = {k: v for k, v in env.items() if not k.startswith(_SECRET_PREFIXES)}
    keys = env.get(master_keys_variable(service)) or env.get("PI_MASTER_KEYS")
    if keys:
        own["PI_MASTER_KEYS"] = keys
    if service == "auth" and env.get("PI_ADMIN_TOKEN"):
        own["PI_ADMIN_TOKEN"] = env["PI_ADMIN_TOKEN"]
    if service == "payments" and env.get("PI_CARD_FINGERPRINT_KEY"):
        own["PI_CARD_FINGERPRINT_KEY"] = env["PI_CARD_FINGERPRINT_KEY"]
    own.update(identity(options, service).env())
    url = env.get("DATABASE_URL", "")
    if _is_embedded(options, url):
        if migrate:
            own["PI_DB_SERVICE_ROLE"] = db_role(service)
        else:
            own["DATABASE_URL"] = role_url(url, db_role(service))
    return own


def _is_embedded(options: LaunchOptions, url: str) -> bool:
    """The launcher's own server (trust on its socket): roles need no password there."""
    return bool(url) and f"host={quote(str(options.postgres_dir), safe='/')}" in url
