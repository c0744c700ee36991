"""Token revocations as verifiers see them: the list, and what keeps it current.

`RevocationList` holds revoked `jti`s until their tokens expire and when it last had a
complete view of them; `RevocationPoller` pulls `AuthInternalService.ListRevokedTokens`
into it (a complete view per successful pull), `listen_for_revocations` applies those
published on `pi:revocations` at once (Redis pub/sub: fast, but no proof of
completeness, so it does not count as a view). `TokenVerifier` fails closed when the
last view is older than its bound (`pi.platform.security.tokens`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import grpc
from google.protobuf import timestamp_pb2

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from pi.platform.cache import Cache

log = logging.getLogger(__name__)

MAX_LEEWAY_SECONDS = 30.0
REVOCATION_CHANNEL = "pi:revocations"


class RevocationList:
    """Revoked token ids (`jti`) until their tokens expire, held in memory.

    `viewed(at)` records a complete view of the revocations as of `at` (a poll of the
    store or of auth that succeeded); `last_view` is the newest, or the list's creation
    time before any. Verifiers use it to bound how stale their view may be.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._expiry: dict[str, float] = {}
        self._clock = clock
        self._created = clock()
        self._viewed: float | None = None

    def now(self) -> float:
        """The time on this list's clock (what `viewed` and verifiers compare)."""
        return self._clock()

    def viewed(self, at: float) -> None:
        if self._viewed is None or at > self._viewed:
            self._viewed = at

    @property
    def last_view(self) -> float:
        return self._created if self._viewed is None else self._viewed

    def stale_for(self, now: float) -> float:
        """Seconds since the last complete view."""
        return now - self.last_view

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
        started = self._revocations.now()
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
        # Complete as of when the request left: anything revoked later is in a next pull.
        self._revocations.viewed(started)
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


def _rpc_error_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return getattr(code, "name", type(exc).__name__)
