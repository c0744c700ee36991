"""What the auth use cases need from the world, as protocols.

The unit of work (`UnitOfWork`, made by `UnitsOfWork` per business step) holds the
repositories; its PostgreSQL and in-memory adapters are in `pi.auth.adapters`. The
cryptography (secret hashing, token signing, key generation, sealing stored responses)
and the revocation fan-out are ports too, so that this package needs nothing beyond the
standard library and the platform kernel.

Repositories follow the unit's rules (`pi.platform.db.unit_of_work`): reads are awaited;
writes are queued (plain methods) and happen at `commit()`. A write documented as
*conditional* makes the unit conflict (`Conflict`, nothing kept) when its condition no
longer holds at commit; `optimistically` then decides again on a LOCKED unit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from pi.auth.domain.merchants import ApiKey, Credentials, Merchant, SecretHash
from pi.auth.domain.signing_keys import NewSigningKey, StoredKey
from pi.auth.domain.throttle import LoginFailures
from pi.auth.domain.tokens import RevokedToken, TokenGrant
from pi.platform.kernel.units import Mode, Unit

_T_co = TypeVar("_T_co", covariant=True)

Clock = Callable[[], datetime]


class Pending(Protocol[_T_co]):
    """The result of a queued write, known once the unit has committed."""

    @property
    def value(self) -> _T_co: ...


# -- idempotency ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdempotentRequest:
    """A mutation as its idempotency key sees it (AIP-155). `key` None: the client sent
    none, so nothing is claimed or replayed."""

    scope: str
    operation: str
    key: str | None
    fingerprint: str


@dataclass(frozen=True)
class PriorRequest:
    """What an idempotency key held when a claim found it taken: the fingerprint and the
    response of the request that took it (None: gone, or no response stored)."""

    fingerprint: str | None
    response: bytes | None


# -- repositories --------------------------------------------------------------------------


class Merchants(Protocol):
    def add(self, merchant: Merchant) -> None: ...


class ApiKeys(Protocol):
    def add(self, key: ApiKey, secret_hash: SecretHash) -> None:
        """A new key of an existing merchant."""

    async def of_merchant(self, merchant_id: str, key_id: str) -> ApiKey | None:
        """The merchant's key `key_id` (None if it is not theirs); a LOCKED unit locks
        it against concurrent revocations and token issues."""

    async def credentials(self, key_id: str) -> Credentials | None:
        """The key and its secret hash, whoever owns it; a LOCKED unit locks it against
        a concurrent revocation (which then waits for this unit's token, and revokes it)."""

    async def page(
        self, merchant_id: str, *, after: tuple[datetime, str] | None, limit: int
    ) -> list[ApiKey]:
        """The merchant's keys newest first; `after` is the (create_time, id) of the last
        key of the previous page (ids alone are only millisecond-ordered)."""

    def rehash(self, key_id: str, secret_hash: SecretHash) -> None: ...

    def revoke(self, key_id: str, now: datetime) -> None:
        """Mark the key revoked at `now`, unless it is already."""


class FailedLogins(Protocol):
    """Failed secrets per API key: only keys that exist are recorded, so the table holds
    at most a row per key however many made-up ids are tried."""

    async def get(self, key_id: str) -> LoginFailures:
        """The record, unlocked: a failure is counted under its own lock (`lock`)."""

    async def lock(self, key_id: str) -> LoginFailures:
        """The record, created empty if missing, and locked until the unit ends, so that
        concurrent failures for one id are all counted (LOCKED units only)."""

    def save(self, key_id: str, failures: LoginFailures, now: datetime) -> None:
        """Replace the record `lock` returned."""

    def forget_stale(self, touched_before: datetime, now: datetime) -> Pending[int]:
        """Delete records last saved before `touched_before` that hold no running lock."""


class Tokens(Protocol):
    """Issued tokens (by jti only, never the token) and their revocations."""

    def add_issued(self, grant: TokenGrant) -> None:
        """Conditional: recorded only while the grant's API key is active, so that a
        concurrent RevokeApiKey either sees this token (and revokes it) or makes it miss."""

    async def issued(self, merchant_id: str, token_id: str) -> TokenGrant | None:
        """The merchant's issued token (None if it is not theirs)."""

    async def live_unrevoked(self, api_key_id: str, now: datetime) -> list[TokenGrant]:
        """Tokens issued with the key, not expired at `now` and not revoked, by jti."""

    def revoke(self, grants: Sequence[TokenGrant], now: datetime) -> None:
        """Revoke the tokens at `now`; a token revoked already keeps its first revocation."""

    async def revocation(self, token_id: str) -> RevokedToken | None: ...

    async def revoked_since(
        self, revoked_after: datetime | None, now: datetime
    ) -> list[RevokedToken]:
        """Revocations of tokens unexpired at `now`, oldest first (then by jti)."""

    def forget_expired(self, now: datetime) -> Pending[int]:
        """Delete issued and revoked tokens expired at `now`: they matter to no one."""


class SigningKeys(Protocol):
    async def current_kid(self) -> str | None:
        """The current key's kid; a LOCKED unit locks it (rotations serialize)."""

    def add_current(self, key: NewSigningKey, now: datetime) -> None:
        """Conditional: the key becomes the current one only if there is none (the
        database allows one)."""

    def demote(self, kid: str, *, now: datetime, verify_until: datetime) -> None:
        """Make the current key `kid` a previous one, verifying until `verify_until`."""

    async def expired_previous(self, now: datetime) -> list[str]:
        """Previous keys that no live token can need any more; a LOCKED unit locks them."""

    def retire(self, kids: Sequence[str]) -> None:
        """Drop the keys from the JWKS and erase their private halves."""

    async def published(self) -> list[StoredKey]:
        """Current and previous keys, the current one first, then newest first."""


class IdempotencyKeys(Protocol):
    async def claim(self, request: IdempotentRequest, response: bytes) -> PriorRequest | None:
        """Claim the request's key holding `response` (the effect's response, known up
        front); None when claimed (or there is no key), else what the key already holds.

        The claim is undone with the unit if it does not commit; a concurrent claim of
        the same key waits for this unit and then finds its response.
        """

    def forget_before(self, cutoff: datetime) -> Pending[int]:
        """Delete keys claimed before `cutoff`."""


# -- the unit of work ----------------------------------------------------------------------


class UnitOfWork(Unit, Protocol):
    """One business step: `async with units(mode) as unit:`, `await unit.commit()`."""

    @property
    def merchants(self) -> Merchants: ...

    @property
    def api_keys(self) -> ApiKeys: ...

    @property
    def failed_logins(self) -> FailedLogins: ...

    @property
    def tokens(self) -> Tokens: ...

    @property
    def signing_keys(self) -> SigningKeys: ...

    @property
    def idempotency(self) -> IdempotencyKeys: ...


class UnitsOfWork(Protocol):
    """Makes a fresh unit per business step (never shared between requests)."""

    def __call__(self, mode: Mode) -> UnitOfWork: ...


# -- cryptography and announcements --------------------------------------------------------


class SecretHasher(Protocol):
    """Keyed hashes of API secrets, under keys derived from the master keys."""

    @property
    def current_version(self) -> int:
        """The master-key version new hashes are made with."""

    def hash(self, secret: str) -> SecretHash: ...

    def matches(self, secret: str, stored: SecretHash | None) -> bool:
        """Whether `secret` is the one `stored` was made from; always one hash and one
        constant-time comparison, with `stored` None (an unknown key id) too, so that
        timing does not tell existing key ids from made-up ones."""


class TokenSigner(Protocol):
    def sign(self, claims: Mapping[str, object]) -> str:
        """A signed JWT carrying `claims`."""


class PublicKeys(Protocol):
    def jwks(self) -> list[dict[str, str]]:
        """The public keys (JWK) that verify live tokens, the current one first."""


class SigningKeyGenerator(Protocol):
    def generate(self) -> NewSigningKey:
        """A new key pair, its private half encrypted for storage."""


class Cipher(Protocol):
    """Authenticated encryption under the master keys (the platform's `MasterKeys`)."""

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes: ...

    def decrypt(self, ciphertext: bytes, aad: bytes = b"") -> bytes: ...


class AddressFailures(Protocol):
    """Failed secrets per client address, kept where rate limits are (Redis across
    replicas, else in process) for the throttle window only: losing them loses no data."""

    async def get(self, address: str) -> LoginFailures:
        """The record (empty if none). Raises if the store cannot answer."""

    async def save(self, address: str, failures: LoginFailures) -> None: ...


class RevocationSink(Protocol):
    """Where committed revocations are announced (local verifier, pub/sub)."""

    async def revoked(self, tokens: Sequence[RevokedToken]) -> None: ...
