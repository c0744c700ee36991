"""Idempotent replays of CreateMerchant and CreateApiKey (AIP-155).

A replay returns the first response *including the secret*: a client that lost the first
response must be able to use the key it caused to be created. The stored response is
therefore AES-256-GCM ciphertext under the master keys, bound to the scope, operation and
key it was stored under, never plaintext, and is purged with its key after 24 hours.

Same key and same request: the first response. Same key, different request:
ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED. A key claimed without a response (or gone
meanwhile): ABORTED / IDEMPOTENCY_KEY_IN_USE, which the client may retry.
"""

from __future__ import annotations

import json
from typing import Any

from pi.auth.app.ports import Cipher, IdempotentRequest, PriorRequest
from pi.platform.kernel import idempotency

#: How long a key and its response are kept (the platform's idempotency retention).
RETENTION = idempotency.RETENTION


def replayed(request: IdempotentRequest, prior: PriorRequest) -> bytes:
    """The stored response to replay for `request`, or the error the key calls for."""
    if prior.fingerprint is None:  # the key was gone by the time it was read
        if prior.response is None:
            raise idempotency.in_progress()
        return prior.response
    return idempotency.replayed(prior.fingerprint, prior.response, request.fingerprint, request.key)


class SealedResponses:
    """Responses stored for replays, encrypted because they hold a secret."""

    def __init__(self, cipher: Cipher) -> None:
        self._cipher = cipher

    def seal(self, request: IdempotentRequest, payload: dict[str, Any]) -> bytes:
        """The response to store with the request's key (empty when there is no key:
        nothing is stored then)."""
        if request.key is None:
            return b""
        plaintext = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return self._cipher.encrypt(plaintext, _aad(request))

    def open(self, request: IdempotentRequest, sealed: bytes) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._cipher.decrypt(sealed, _aad(request)))
        return data


def _aad(request: IdempotentRequest) -> bytes:
    return f"pi.auth.idempotency:{request.scope}:{request.operation}:{request.key}".encode()
