"""A merchant's API keys: CreateApiKey, ListApiKeys, RevokeApiKey.

- A new key's secret is random (`sk_` + 256 bits), shown once, and stored only as a keyed
  hash (`SecretHasher`). CreateApiKey is idempotent per merchant (see `idempotency`).
- Keys list newest first, by (create time, id), behind signed page tokens bound to the
  merchant.
- Scopes (`pi.platform.kernel.scopes`): a new key holds the scopes asked for, or the
  calling token's when none are; never one the calling token lacks, so a token cannot
  mint a broader credential than itself. Revoking a key needs every scope it holds.
- RevokeApiKey also revokes every unexpired token issued with the key (and announces
  those revocations), so a revoked key stops working at once, not after 15 minutes.
  Revoking a revoked key returns it unchanged. Another merchant's key is NOT_FOUND, like
  a key that does not exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pi.auth.app.idempotency import SealedResponses, replayed
from pi.auth.app.payloads import new_key_from_json, new_key_to_json
from pi.auth.app.ports import (
    Clock,
    IdempotentRequest,
    RevocationSink,
    SecretHasher,
    UnitOfWork,
    UnitsOfWork,
)
from pi.auth.domain import merchants
from pi.auth.domain.merchants import ApiKey, NewApiKey, SecretHash
from pi.auth.domain.tokens import RevokedToken
from pi.platform.kernel import scopes
from pi.platform.kernel.errors import InvalidArgument, NotFound
from pi.platform.kernel.pages import PageToken, page_size
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.text import printable_text
from pi.platform.kernel.units import Mode, optimistically

OP_CREATE_API_KEY = "pi.auth.v1.AuthService/CreateApiKey"
_LIST_API_KEYS = "ListApiKeys"


@dataclass(frozen=True)
class KeyToStore:
    """A key about to be stored: what its creator sees, and the hash the store keeps."""

    created: NewApiKey
    secret_hash: SecretHash


def new_api_key(
    hasher: SecretHasher,
    merchant_id: str,
    name: str,
    now: datetime,
    held: frozenset[str] = scopes.FULL,
) -> KeyToStore:
    secret = merchants.new_api_secret()
    key = ApiKey(
        id=merchants.new_api_key_id(),
        merchant_id=merchant_id,
        display_name=name,
        create_time=now,
        scopes=held,
    )
    return KeyToStore(NewApiKey(key, secret), hasher.hash(secret))


class CreateApiKey:
    def __init__(
        self, units: UnitsOfWork, hasher: SecretHasher, sealed: SealedResponses, clock: Clock
    ) -> None:
        self._units = units
        self._hasher = hasher
        self._sealed = sealed
        self._clock = clock

    async def __call__(
        self,
        principal: Principal,
        display_name: str,
        *,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        scope_names: Sequence[str] = (),
    ) -> NewApiKey:
        merchant_id = require_merchant(principal)
        name = printable_text(
            display_name, "display_name", merchants.MAX_DISPLAY_NAME, required=False
        )
        held = scopes.parse(scope_names, field="scopes") or principal.scopes
        scopes.require_within(
            held, principal.scopes, "A new key may only hold scopes the calling token holds."
        )
        request = IdempotentRequest(merchant_id, OP_CREATE_API_KEY, idempotency_key, fingerprint)
        now = self._clock()

        async def create(unit: UnitOfWork) -> NewApiKey:
            async with unit:
                new = new_api_key(self._hasher, merchant_id, name, now, held)
                response = self._sealed.seal(request, new_key_to_json(new.created))
                prior = await unit.idempotency.claim(request, response)
                if prior is not None:
                    return new_key_from_json(self._sealed.open(request, replayed(request, prior)))
                unit.api_keys.add(new.created.api_key, new.secret_hash)
                await unit.commit()
                return new.created

        return await optimistically(self._units, create)


class ListApiKeys:
    def __init__(self, units: UnitsOfWork, page_tokens: PageToken) -> None:
        self._units = units
        self._page_tokens = page_tokens

    async def __call__(
        self, principal: Principal, *, page_size_value: int = 0, page_token: str = ""
    ) -> tuple[list[ApiKey], str]:
        """The caller's keys newest first, and the next page token ("" on the last page)."""
        merchant_id = require_merchant(principal)
        size = page_size(page_size_value)
        filters = {"list": _LIST_API_KEYS, "merchant": merchant_id}
        after: tuple[datetime, str] | None = None
        if page_token:
            after = _page_position(self._page_tokens.decode(page_token, filters))
        async with self._units(Mode.READ) as unit:
            keys = await unit.api_keys.page(merchant_id, after=after, limit=size + 1)
        if len(keys) <= size:
            return keys, ""
        keys = keys[:size]
        last = keys[-1]
        position = {"t": last.create_time.isoformat(), "id": last.id}
        return keys, self._page_tokens.encode(position, filters)


class RevokeApiKey:
    def __init__(self, units: UnitsOfWork, revocations: RevocationSink, clock: Clock) -> None:
        self._units = units
        self._revocations = revocations
        self._clock = clock

    async def __call__(self, principal: Principal, key_id: str) -> ApiKey:
        """Revoke one of the caller's keys, and every unexpired token issued with it."""
        merchant_id = require_merchant(principal)
        merchants.check_id(
            key_id, field_path="id", kind="API key", valid=merchants.is_api_key_id(key_id)
        )
        now = self._clock()
        revoked: list[RevokedToken] = []
        # Locked: the key stays locked until the commit, so no token can be issued with
        # it between reading its live tokens and revoking them.
        async with self._units(Mode.LOCKED) as unit:
            key = await unit.api_keys.of_merchant(merchant_id, key_id)
            if key is None:
                raise NotFound("No such API key.", reason="API_KEY_NOT_FOUND")
            scopes.require_within(
                key.scopes, principal.scopes, "Revoking a key needs every scope it holds."
            )
            if key.active:
                live = await unit.tokens.live_unrevoked(key_id, now)
                unit.api_keys.revoke(key_id, now)
                unit.tokens.revoke(live, now)
                await unit.commit()
                key = key.revoked_at(now)
                revoked = [grant.revoked_at(now) for grant in live]
        await self._revocations.revoked(revoked)
        return key


def _page_position(position: dict[str, Any]) -> tuple[datetime, str]:
    try:
        create_time = datetime.fromisoformat(position["t"])
        key_id = position["id"]
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument.field("page_token", "is not a valid page token.") from None
    if create_time.tzinfo is None or not isinstance(key_id, str):
        raise InvalidArgument.field("page_token", "is not a valid page token.")
    if not merchants.is_api_key_id(key_id):
        raise InvalidArgument.field("page_token", "is not a valid page token.")
    return create_time, key_id
