"""Every auth use case, as the entrypoints and workers see them (wired in bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass

from pi.auth.app.api_keys import CreateApiKey, ListApiKeys, RevokeApiKey
from pi.auth.app.housekeeping import PurgeExpired
from pi.auth.app.jwks import GetJwks
from pi.auth.app.merchants import CreateMerchant
from pi.auth.app.revocations import ListRevokedTokens
from pi.auth.app.signing_keys import SigningKeyLifecycle
from pi.auth.app.tokens import IssueToken, RevokeToken


@dataclass(frozen=True)
class AuthUseCases:
    create_merchant: CreateMerchant
    issue_token: IssueToken
    revoke_token: RevokeToken
    get_jwks: GetJwks
    create_api_key: CreateApiKey
    list_api_keys: ListApiKeys
    revoke_api_key: RevokeApiKey
    list_revoked_tokens: ListRevokedTokens
    purge_expired: PurgeExpired
    signing_keys: SigningKeyLifecycle
