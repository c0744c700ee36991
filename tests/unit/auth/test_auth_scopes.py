"""Finding 2: keys carry scopes, tokens at most their key's, and no token mints a key
broader than itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pi.platform.kernel import scopes
from pi.platform.kernel.errors import InvalidArgument, PermissionDenied
from pi.platform.kernel.principal import Principal

if TYPE_CHECKING:
    from conftest import Auth

PAYMENTS_ONLY = frozenset({scopes.TRANSACTIONS_WRITE, scopes.PAYMENTS_WRITE, scopes.PAYMENTS_READ})


async def test_a_merchants_first_key_holds_every_scope(auth: Auth) -> None:
    created, _ = await auth.merchant()
    assert created.api_key.scopes == scopes.FULL
    issued = await auth.use_cases.issue_token(created.api_key.id, created.secret)
    assert issued.grant.scopes == scopes.FULL


async def test_a_restricted_key_makes_tokens_with_only_its_scopes(auth: Auth) -> None:
    _, merchant = await auth.merchant()
    read_only = await auth.use_cases.create_api_key(
        merchant, "dashboard", scope_names=[scopes.PAYMENTS_READ, scopes.TRANSACTIONS_READ]
    )
    assert read_only.api_key.scopes == {scopes.PAYMENTS_READ, scopes.TRANSACTIONS_READ}
    listed, _ = await auth.use_cases.list_api_keys(merchant)
    assert {k.id: k.scopes for k in listed}[read_only.api_key.id] == read_only.api_key.scopes
    grant = (await auth.use_cases.issue_token(read_only.api_key.id, read_only.secret)).grant
    assert grant.scopes == read_only.api_key.scopes
    narrower = await auth.use_cases.issue_token(
        read_only.api_key.id, read_only.secret, scope_names=[scopes.PAYMENTS_READ]
    )
    assert narrower.grant.scopes == {scopes.PAYMENTS_READ}
    with pytest.raises(PermissionDenied) as denied:
        await auth.use_cases.issue_token(
            read_only.api_key.id, read_only.secret, scope_names=[scopes.REFUNDS_WRITE]
        )
    assert denied.value.reason == "SCOPE_NOT_HELD"


async def test_a_token_can_never_create_a_key_broader_than_itself(auth: Auth) -> None:
    created, _ = await auth.merchant()
    manager = Principal.merchant(
        created.merchant.id, scopes=PAYMENTS_ONLY | {scopes.API_KEYS_WRITE}
    )
    with pytest.raises(PermissionDenied) as denied:
        await auth.use_cases.create_api_key(manager, "refunds", scope_names=[scopes.REFUNDS_WRITE])
    assert denied.value.reason == "SCOPE_NOT_HELD"
    # Without scopes named, the new key gets the caller's: never more.
    same = await auth.use_cases.create_api_key(manager, "same")
    assert same.api_key.scopes == manager.scopes


async def test_revoking_a_key_needs_every_scope_it_holds(auth: Auth) -> None:
    created, full = await auth.merchant()
    narrow = Principal.merchant(created.merchant.id, scopes=frozenset({scopes.API_KEYS_WRITE}))
    with pytest.raises(PermissionDenied):
        await auth.use_cases.revoke_api_key(narrow, created.api_key.id)
    other = await auth.use_cases.create_api_key(full, "ci", scope_names=[scopes.API_KEYS_WRITE])
    assert not (await auth.use_cases.revoke_api_key(narrow, other.api_key.id)).active


async def test_only_its_own_token_may_be_revoked_without_api_keys_write(auth: Auth) -> None:
    created, _ = await auth.merchant()
    first = (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
    second = (await auth.use_cases.issue_token(created.api_key.id, created.secret)).grant
    payments = Principal.merchant(
        created.merchant.id, token_id=first.token_id, scopes=PAYMENTS_ONLY
    )
    with pytest.raises(PermissionDenied):
        await auth.use_cases.revoke_token(payments, second.token_id)
    assert (await auth.use_cases.revoke_token(payments, first.token_id)).token_id == first.token_id


async def test_unknown_scopes_are_a_field_violation(auth: Auth) -> None:
    created, merchant = await auth.merchant()
    with pytest.raises(InvalidArgument) as invalid:
        await auth.use_cases.create_api_key(merchant, "x", scope_names=["payments:everything"])
    assert [v.field for v in invalid.value.violations] == ["scopes"]
    with pytest.raises(InvalidArgument):
        await auth.use_cases.issue_token(created.api_key.id, created.secret, scope_names=["admin"])
