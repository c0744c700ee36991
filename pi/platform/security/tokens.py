"""Access-token verification, done by every service on every call.

`TokenVerifier.verify(token)` checks an ES256 JWT issued by the auth service: the
algorithm is pinned (so `alg: none` and HS256-signed-with-the-public-key tokens fail),
the `kid` header must name a known key, and `iss`, `aud`, `exp`, `iat`, `jti`, `sub` are
required. Public keys come from a `KeySource`; `RemoteJwks` caches the auth service's
JWKS so the hot path does no I/O. Revoked `jti`s live in a `RevocationList` fed by a
`RevocationPoller` (periodic pull from auth) and `listen_for_revocations` (pub/sub), in
`pi.platform.security.revocations`.

- A token may live at most `MAX_TOKEN_LIFETIME_SECONDS` (`exp - iat`), whatever it says.
- ECDSA signatures are malleable: (r, s) and (r, n - s) both verify. The cache of
  verified tokens is keyed by the signing input and the signature with S normalised to
  the lower half, so a token's twins share its entry instead of each costing a
  verification and a slot.
- With `max_staleness`, a verifier whose revocation view is older than that refuses
  (UNAVAILABLE, reason REVOCATIONS_STALE) every token issued before the view: a revoked
  token cannot keep working for long because auth is unreachable.
- The `scope` claim becomes the principal's scopes (`pi.platform.kernel.scopes`); a token
  without one holds every scope (tokens issued before scopes existed).

Every other rejection is `Unauthenticated` with reason TOKEN_INVALID, TOKEN_EXPIRED or
TOKEN_REVOKED and a message saying why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.kernel import scopes
from pi.platform.kernel.errors import Unauthenticated, Unavailable
from pi.platform.kernel.principal import Principal
from pi.platform.security.revocations import (
    MAX_LEEWAY_SECONDS,
    REVOCATION_CHANNEL,
    RevocationList,
    RevocationPoller,
    _rpc_error_text,
    listen_for_revocations,
    publish_revocation,
)

__all__ = [
    "MAX_LEEWAY_SECONDS",
    "REVOCATION_CHANNEL",
    "KeySource",
    "RemoteJwks",
    "RevocationList",
    "RevocationPoller",
    "StaticKeySource",
    "TokenVerifier",
    "jwk_from_public_key",
    "listen_for_revocations",
    "public_key_from_jwk",
    "publish_revocation",
]

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti", "sub")
MAX_TOKEN_LENGTH = 4096
#: The longest an access token may live (`exp - iat`): auth issues at most 15 minutes.
MAX_TOKEN_LIFETIME_SECONDS = 900
#: The order of P-256: S and n - S are both valid halves of a signature.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PublicKey = ec.EllipticCurvePublicKey


class KeySource(Protocol):
    """Where a verifier finds the public key for a token's `kid`."""

    def cached_key(self, kid: str) -> PublicKey | None:
        """The key if already known, without I/O (the hot path)."""

    async def public_key(self, kid: str) -> PublicKey | None:
        """The key, fetching it if needed; None if no such key exists."""


class StaticKeySource:
    """Keys held in memory: the auth service's own keys, and tests."""

    def __init__(self, keys: Mapping[str, PublicKey] | None = None) -> None:
        self._keys: dict[str, PublicKey] = dict(keys or {})

    def set_keys(self, keys: Mapping[str, PublicKey]) -> None:
        self._keys = dict(keys)

    def add(self, kid: str, key: PublicKey) -> None:
        self._keys = {**self._keys, kid: key}

    def cached_key(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    async def public_key(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)


class RemoteJwks:
    """The auth service's JWKS (`AuthService.GetJwks`), cached in memory.

    An unknown `kid` triggers a refetch at most once per `min_refetch_seconds`, so a
    flood of forged tokens cannot turn into a flood of calls to auth. After a failed
    fetch the next one may come after `retry_after_failure_seconds` instead: a service
    that started before auth was listening must not refuse good tokens for long. If auth cannot be
    reached and the key is unknown, `public_key` raises `Unavailable` (retry later)
    rather than calling a good token invalid.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout: float = 2.0,
        min_refetch_seconds: float = 5.0,
        retry_after_failure_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._timeout = timeout
        self._min_refetch = min_refetch_seconds
        self._retry_after_failure = min(retry_after_failure_seconds, min_refetch_seconds)
        self._clock = clock
        self._keys: dict[str, PublicKey] = {}
        self._last_fetch: float | None = None
        self._last_fetch_failed = False
        self._lock = asyncio.Lock()

    def cached_key(self, kid: str) -> PublicKey | None:
        return self._keys.get(kid)

    async def public_key(self, kid: str) -> PublicKey | None:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = self._clock()
            gap = self._retry_after_failure if self._last_fetch_failed else self._min_refetch
            if self._last_fetch is None or now - self._last_fetch >= gap:
                await self._refresh_locked()
            key = self._keys.get(kid)
            if key is None and self._last_fetch_failed:
                raise Unavailable(
                    "The token signing keys cannot be fetched right now; retry shortly.",
                    reason="JWKS_UNAVAILABLE",
                )
            return key

    async def refresh(self) -> None:
        """Fetch the key set now (startup, and periodically via `run`)."""
        async with self._lock:
            await self._refresh_locked()

    async def run(self, interval: float = 300.0) -> None:
        """Background task: refresh periodically so retired keys stop verifying."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval)

    async def _refresh_locked(self) -> None:
        self._last_fetch = self._clock()
        try:
            response = await self._stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=self._timeout)
        except grpc.RpcError as exc:
            self._last_fetch_failed = True
            log.warning("fetching JWKS failed: %s", _rpc_error_text(exc))
            return
        keys: dict[str, PublicKey] = {}
        for jwk in response.keys:
            try:
                keys[jwk.kid] = public_key_from_jwk(
                    {
                        "kty": jwk.kty,
                        "crv": jwk.crv,
                        "x": jwk.x,
                        "y": jwk.y,
                        "kid": jwk.kid,
                        "alg": jwk.alg,
                    }
                )
            except ValueError as exc:
                log.warning("ignoring unusable JWKS key %r: %s", jwk.kid, exc)
        self._keys = keys
        self._last_fetch_failed = False


class TokenVerifier:
    """Verifies access tokens and turns them into merchant principals.

    Tokens that verified once are remembered (bounded) until they expire, so a client
    reusing its token costs a dictionary lookup plus the revocation check, not an ECDSA
    verification. (A remembered token stays valid if its key later leaves the JWKS; it
    still expires within the token lifetime, at most 15 minutes. Revoke it to end it now.)
    The cache is keyed by `cache_key`: a malleated twin of a token is the same entry.
    """

    def __init__(
        self,
        keys: KeySource,
        revocations: RevocationList,
        issuer: str,
        audience: str,
        *,
        leeway: float = 10.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        max_staleness: float | None = None,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_SECONDS} seconds")
        self._keys = keys
        self._revocations = revocations
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._clock = clock
        self._cache_size = cache_size
        self._max_staleness = max_staleness
        self._verified: dict[str, Principal] = {}
        # Each verified token as presented -> its `cache_key`: a client reuses its token
        # as is, so the key (a base64 decode and big-integer arithmetic) is worked out
        # once, not on every call.
        self._keys_of: dict[str, str] = {}

    @property
    def cached_tokens(self) -> int:
        return len(self._verified)

    async def verify(self, token: str) -> Principal:
        now = self._clock()
        key = self._keys_of.get(token)
        known = key is not None
        if key is None:
            key = cache_key(token)
        principal = self._verified.get(key)
        if principal is None:
            principal = await self._verify_signature_and_claims(token, now)
            if len(self._verified) >= self._cache_size:
                self._verified.clear()
            self._verified[key] = principal
        if not known:  # verified (a failure raised above): remembered as presented
            if len(self._keys_of) >= self._cache_size:
                self._keys_of.clear()
            self._keys_of[token] = key
        if principal.expires_at is not None and principal.expires_at + self._leeway <= now:
            self._verified.pop(key, None)
            raise Unauthenticated("The token has expired.", reason="TOKEN_EXPIRED")
        if principal.token_id is not None and self._revocations.is_revoked(principal.token_id):
            raise Unauthenticated("The token has been revoked.", reason="TOKEN_REVOKED")
        if self._max_staleness is not None:
            self._refuse_if_stale(principal, now)
        return principal

    def _refuse_if_stale(self, principal: Principal, now: float) -> None:
        # Fail closed: beyond the bound, a token issued before the last complete view
        # may have been revoked since, unseen here.
        if self._revocations.stale_for(now) <= (self._max_staleness or 0.0):
            return
        issued = principal.issued_at
        if issued is None or issued <= self._revocations.last_view:
            raise Unavailable(
                "Token revocations cannot be confirmed right now; retry shortly.",
                reason="REVOCATIONS_STALE",
            )

    async def _verify_signature_and_claims(self, token: str, now: float) -> Principal:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise _invalid("The token is malformed.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("The token is malformed.") from None
        if header.get("alg") != ALGORITHM:
            raise _invalid(f"The token must be signed with {ALGORITHM}.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("The token has no key id (kid).")
        key = self._keys.cached_key(kid)
        if key is None:
            key = await self._keys.public_key(kid)
        if key is None:
            raise _invalid("The token was signed with an unknown key.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("The token has expired.", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidAudienceError:
            raise _invalid("The token is not meant for this API (aud).") from None
        except jwt.InvalidIssuerError:
            raise _invalid("The token has an unexpected issuer (iss).") from None
        except jwt.InvalidSignatureError:
            raise _invalid("The token signature is invalid.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"The token lacks the {exc.claim!r} claim.") from None
        except jwt.PyJWTError:
            raise _invalid("The token is invalid.") from None
        sub, jti, exp, iat = claims["sub"], claims["jti"], claims["exp"], claims["iat"]
        if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not jti:
            raise _invalid("The token's sub and jti claims must be non-empty strings.")
        if not isinstance(exp, int) or not isinstance(iat, (int, float)):
            raise _invalid("The token's exp and iat claims must be numbers.")
        if iat > now + self._leeway:
            raise _invalid("The token was issued in the future.")
        if exp - iat > MAX_TOKEN_LIFETIME_SECONDS:
            raise _invalid("The token's lifetime (exp - iat) exceeds 15 minutes.")
        held = scopes.from_claim(claims["scope"]) if "scope" in claims else None
        if "scope" in claims and held is None:
            raise _invalid("The token's scope claim must be a string.")
        return Principal.merchant(
            sub, token_id=jti, expires_at=exp, scopes=held, issued_at=int(iat)
        )


def cache_key(token: str) -> str:
    """The token with its ECDSA S in the lower half: equal for a token and its twins.

    Anything that is not a 64-byte raw signature is returned as is (it will fail
    verification, and a failure is not cached).
    """
    signing_input, dot, signature = token.rpartition(".")
    if not dot or len(signature) != 86:
        return token
    try:
        raw = base64.urlsafe_b64decode(signature + "==")
    except (binascii.Error, ValueError):
        return token
    if len(raw) != 64:
        return token
    s = int.from_bytes(raw[32:], "big")
    if s > _P256_ORDER // 2:
        s = _P256_ORDER - s
    return f"{signing_input}.{raw[:32].hex()}{s:064x}"


def public_key_from_jwk(jwk: Mapping[str, str]) -> PublicKey:
    """An EC P-256 public key from a JWK; `ValueError` for any other kind of key."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ValueError("only EC P-256 keys are accepted")
    if jwk.get("alg") not in (None, "", ALGORITHM):
        raise ValueError(f"only {ALGORITHM} keys are accepted")
    try:
        key = ECAlgorithm.from_jwk(
            json.dumps({"kty": "EC", "crv": "P-256", "x": jwk.get("x"), "y": jwk.get("y")})
        )
    except jwt.PyJWTError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("the JWK is not a public key")
    return key


def jwk_from_public_key(key: PublicKey, kid: str) -> dict[str, str]:
    """The public JWK (kty, crv, x, y, kid, use, alg) of an ES256 verification key."""
    fields = ECAlgorithm.to_jwk(key, as_dict=True)
    return {
        "kty": str(fields["kty"]),
        "crv": str(fields["crv"]),
        "x": str(fields["x"]),
        "y": str(fields["y"]),
        "kid": kid,
        "use": "sig",
        "alg": ALGORITHM,
    }


def _invalid(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason="TOKEN_INVALID")
