"""Access-token verification, done by every service on every call.

`TokenVerifier.verify(token)` checks an ES256 JWT issued by the auth service: the
algorithm is pinned (so `alg: none` and HS256-signed-with-the-public-key tokens fail),
the `kid` header must name a known key, and `iss`, `aud`, `exp`, `iat`, `jti`, `sub` are
required. Public keys come from a `KeySource`; `RemoteJwks` caches the auth service's
JWKS so the hot path does no I/O. Revoked `jti`s live in a `RevocationList` fed by a
`RevocationPoller` (periodic pull from auth) and `listen_for_revocations` (pub/sub).

Every rejection is `Unauthenticated` with reason TOKEN_INVALID, TOKEN_EXPIRED or
TOKEN_REVOKED and a message saying why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import timestamp_pb2
from jwt.algorithms import ECAlgorithm

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.cache import Cache
from pi.platform.kernel.errors import Unauthenticated, Unavailable
from pi.platform.kernel.principal import Principal

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti", "sub")
MAX_LEEWAY_SECONDS = 30.0
MAX_TOKEN_LENGTH = 4096
REVOCATION_CHANNEL = "pi:revocations"

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


class RevocationList:
    """Revoked token ids (`jti`) until their tokens expire, held in memory."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._expiry: dict[str, float] = {}
        self._clock = clock

    def add(self, jti: str, expires_at: float) -> None:
        if expires_at > self._clock() - MAX_LEEWAY_SECONDS:
            self._expiry[jti] = max(expires_at, self._expiry.get(jti, 0.0))

    def is_revoked(self, jti: str) -> bool:
        return jti in self._expiry

    def __contains__(self, jti: object) -> bool:
        return jti in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def prune(self) -> int:
        """Forget revocations of tokens that expired (beyond leeway); return how many."""
        cutoff = self._clock() - MAX_LEEWAY_SECONDS
        stale = [jti for jti, exp in self._expiry.items() if exp < cutoff]
        for jti in stale:
            del self._expiry[jti]
        return len(stale)


class RevocationPoller:
    """Pulls `AuthInternalService.ListRevokedTokens` into a `RevocationList`.

    Run `run()` as a background task. Each pull asks for revocations recorded since the
    newest one seen (minus an overlap that covers out-of-order commits), so a revoked
    token is rejected everywhere within about one `interval`.
    """

    OVERLAP_SECONDS = 60

    def __init__(
        self,
        channel: grpc.aio.Channel,
        revocations: RevocationList,
        *,
        interval: float = 2.0,
        service_token: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        self._stub = auth_pb2_grpc.AuthInternalServiceStub(channel)
        self._revocations = revocations
        self._interval = interval
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {service_token}"),) if service_token else None
        self._watermark: int | None = None
        self.last_success: float | None = None

    async def poll_once(self) -> int:
        """One pull; returns how many revocations it received. Raises `grpc.RpcError`."""
        request = auth_pb2.ListRevokedTokensRequest()
        if self._watermark is not None:
            request.revoked_after.CopyFrom(
                timestamp_pb2.Timestamp(seconds=max(0, self._watermark - self.OVERLAP_SECONDS))
            )
        response = await self._stub.ListRevokedTokens(
            request, timeout=self._timeout, metadata=self._metadata
        )
        for revoked in response.revoked_tokens:
            self._revocations.add(revoked.token_id, float(revoked.expire_time.seconds))
            seconds = revoked.revoke_time.seconds
            if self._watermark is None or seconds > self._watermark:
                self._watermark = seconds
        self._revocations.prune()
        self.last_success = time.monotonic()
        return len(response.revoked_tokens)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.poll_once()
                if failing:
                    log.info("revocation polling recovered")
                failing = False
            except grpc.RpcError as exc:
                if not failing:
                    log.warning("revocation polling failed: %s", _rpc_error_text(exc))
                failing = True
            await asyncio.sleep(self._interval)


async def publish_revocation(cache: Cache, jti: str, expires_at: int) -> None:
    """Tell every verifier listening on `pi:revocations` that `jti` is revoked."""
    payload = json.dumps({"jti": jti, "exp": int(expires_at)}).encode()
    await cache.publish(REVOCATION_CHANNEL, payload)


async def listen_for_revocations(cache: Cache, revocations: RevocationList) -> None:
    """Background task: add revocations published on `pi:revocations`; reconnects."""
    backoff = 0.5
    while True:
        try:
            async with cache.subscribe(REVOCATION_CHANNEL) as messages:
                backoff = 0.5
                async for message in messages:
                    _apply_revocation_message(revocations, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("revocation subscription lost (%s); reconnecting", type(exc).__name__)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


def _apply_revocation_message(revocations: RevocationList, message: bytes) -> None:
    try:
        data = json.loads(message)
        revocations.add(str(data["jti"]), float(data["exp"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring malformed revocation message")


class TokenVerifier:
    """Verifies access tokens and turns them into merchant principals.

    Tokens that verified once are remembered (bounded) until they expire, so a client
    reusing its token costs a dictionary lookup plus the revocation check, not an ECDSA
    verification. (A remembered token stays valid if its key later leaves the JWKS; it
    still expires within the token lifetime, at most 15 minutes. Revoke it to end it now.)
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
        self._verified: dict[str, Principal] = {}

    async def verify(self, token: str) -> Principal:
        now = self._clock()
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._verify_signature_and_claims(token, now)
            if len(self._verified) >= self._cache_size:
                self._verified.clear()
            self._verified[token] = principal
        if principal.expires_at is not None and principal.expires_at + self._leeway <= now:
            self._verified.pop(token, None)
            raise Unauthenticated("The token has expired.", reason="TOKEN_EXPIRED")
        if principal.token_id is not None and self._revocations.is_revoked(principal.token_id):
            raise Unauthenticated("The token has been revoked.", reason="TOKEN_REVOKED")
        return principal

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
        return Principal.merchant(sub, token_id=jti, expires_at=exp)


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


def _rpc_error_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return getattr(code, "name", type(exc).__name__)
