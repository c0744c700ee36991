"""GetJwks: the public keys that verify live tokens, from the running key ring (no I/O)."""

from __future__ import annotations

from pi.auth.app.ports import PublicKeys


class GetJwks:
    def __init__(self, keys: PublicKeys) -> None:
        self._keys = keys

    def __call__(self) -> list[dict[str, str]]:
        return self._keys.jwks()
