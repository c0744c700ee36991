"""The auth use cases on the in-memory unit of work: no database, no network.

`auth` is the service's use cases as `pi.auth.bootstrap` wires them, on `MemoryUnits`,
with a clock the test moves, the real secret hashing and key ring, and the announced
revocations recorded. `make_auth(...)` builds more on the same store (another replica,
other master keys).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from pi.auth.adapters.memory import AuthState, MemoryUnits
from pi.auth.adapters.signing_keys import KeyRing
from pi.auth.app.use_cases import AuthUseCases
from pi.auth.bootstrap import key_ring, signing_key_lifecycle, wire_use_cases
from pi.auth.domain.merchants import MerchantRegistration
from pi.auth.domain.tokens import RevokedToken
from pi.platform.kernel.principal import Principal
from pi.platform.security.crypto import MasterKeys

ISSUER = "pi-platform"
AUDIENCE = "pi-api"


class Clock:
    """A clock that stands still unless the test moves it; starts at the real time (the
    tokens it stamps are checked against the real clock by JWT libraries)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Announced:
    """A `RevocationSink` that remembers what it was told."""

    tokens: list[RevokedToken] = field(default_factory=list)

    async def revoked(self, tokens: Sequence[RevokedToken]) -> None:
        self.tokens.extend(tokens)


@dataclass
class Auth:
    use_cases: AuthUseCases
    units: MemoryUnits
    clock: Clock
    keys: KeyRing
    master_keys: MasterKeys
    announced: Announced

    @property
    def state(self) -> AuthState:
        return self.units.state

    async def merchant(self, name: str = "Acme") -> tuple[MerchantRegistration, Principal]:
        created = await self.use_cases.create_merchant(Principal.admin(), name)
        return created, Principal.merchant(created.merchant.id)


MakeAuth = Callable[..., Awaitable[Auth]]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_auth(clock: Clock) -> MakeAuth:
    async def make(
        units: MemoryUnits | None = None,
        master_keys: MasterKeys | None = None,
        *,
        token_ttl: timedelta = timedelta(minutes=15),
    ) -> Auth:
        units = units or MemoryUnits(clock=clock)
        master_keys = master_keys or MasterKeys({1: secrets.token_bytes(32)})
        signing_keys = signing_key_lifecycle(units, master_keys, clock)
        await signing_keys.ensure_current()
        keys = key_ring(signing_keys, master_keys, clock)
        await keys.refresh()
        announced = Announced()
        use_cases = wire_use_cases(
            units,
            master_keys,
            keys,
            announced,
            signing_keys=signing_keys,
            issuer=ISSUER,
            audience=AUDIENCE,
            token_ttl=token_ttl,
            clock=clock,
        )
        return Auth(use_cases, units, clock, keys, master_keys, announced)

    return make


@pytest.fixture
async def auth(make_auth: MakeAuth) -> Auth:
    return await make_auth()
