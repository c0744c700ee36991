"""CreateMerchant and the idempotent replays of CreateMerchant and CreateApiKey."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pi.auth.app.idempotency import replayed
from pi.auth.app.merchants import ADMIN_SCOPE, OP_CREATE_MERCHANT
from pi.auth.app.ports import IdempotentRequest, PriorRequest
from pi.auth.domain import merchants
from pi.platform.kernel.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
)
from pi.platform.kernel.principal import Principal

if TYPE_CHECKING:  # the fixtures' types, defined in this directory's conftest
    from conftest import Auth


async def test_a_merchant_is_registered_with_a_first_key_whose_secret_works(auth: Auth) -> None:
    created = await auth.use_cases.create_merchant(Principal.admin(), "Acme Coffee")
    assert merchants.is_merchant_id(created.merchant.id)
    assert created.merchant.display_name == "Acme Coffee"
    assert created.merchant.create_time == auth.clock()
    assert created.api_key.merchant_id == created.merchant.id
    assert created.api_key.display_name == merchants.FIRST_KEY_NAME
    assert created.api_key.active
    assert created.secret.startswith("sk_") and len(created.secret) == merchants.SECRET_LENGTH
    assert auth.state.merchants == {created.merchant.id: created.merchant}
    stored = auth.state.api_keys[created.api_key.id]
    assert stored.api_key == created.api_key
    assert created.secret.encode() not in stored.secret_hash.digest
    issued = await auth.use_cases.issue_token(created.api_key.id, created.secret)
    assert issued.grant.merchant_id == created.merchant.id


@pytest.mark.parametrize(
    "principal",
    [Principal.merchant("mer_01JAAAAAAAAAAAAAAAAAAAAAAA"), Principal.service()],
    ids=["merchant", "service"],
)
async def test_only_the_admin_registers_merchants(auth: Auth, principal: Principal) -> None:
    with pytest.raises(PermissionDenied):
        await auth.use_cases.create_merchant(principal, "Mallory")
    assert auth.state.merchants == {}


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "Acme\nCorp", "Acme\u200b", " Acme"])
async def test_a_bad_display_name_is_a_field_violation(auth: Auth, name: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await auth.use_cases.create_merchant(Principal.admin(), name)
    assert [v.field for v in raised.value.violations] == ["display_name"]
    assert auth.state.merchants == {}


async def test_a_retry_replays_the_first_registration_with_its_secret(auth: Auth) -> None:
    create = auth.use_cases.create_merchant
    first = await create(Principal.admin(), "Acme", idempotency_key="r-1", fingerprint="f")
    again = await create(Principal.admin(), "Acme", idempotency_key="r-1", fingerprint="f")
    assert again == first
    assert len(auth.state.merchants) == 1
    (stored,) = auth.state.idempotency_keys.values()
    assert first.secret.encode() not in stored.response
    # The replayed secret is the one that works.
    await auth.use_cases.issue_token(again.api_key.id, again.secret)


async def test_a_key_reused_for_another_request_is_refused(auth: Auth) -> None:
    create = auth.use_cases.create_merchant
    await create(Principal.admin(), "Acme", idempotency_key="r-1", fingerprint="f")
    with pytest.raises(AlreadyExists) as raised:
        await create(Principal.admin(), "Other", idempotency_key="r-1", fingerprint="g")
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert raised.value.metadata == {"idempotency_key": "r-1"}
    assert len(auth.state.merchants) == 1


async def test_without_a_key_every_call_registers_another_merchant(auth: Auth) -> None:
    create = auth.use_cases.create_merchant
    first = await create(Principal.admin(), "Acme", fingerprint="f")
    second = await create(Principal.admin(), "Acme", fingerprint="f")
    assert first.merchant.id != second.merchant.id
    assert auth.state.idempotency_keys == {}


async def test_api_key_creation_is_idempotent_per_merchant(auth: Auth) -> None:
    _, alice = await auth.merchant("Alice")
    _, bob = await auth.merchant("Bob")
    create = auth.use_cases.create_api_key
    a1 = await create(alice, "CI", idempotency_key="k-1", fingerprint="f")
    a2 = await create(alice, "CI", idempotency_key="k-1", fingerprint="f")
    b1 = await create(bob, "CI", idempotency_key="k-1", fingerprint="f")
    assert a1 == a2
    assert b1.api_key.id != a1.api_key.id
    assert b1.api_key.merchant_id == bob.merchant_id
    with pytest.raises(AlreadyExists):
        await create(alice, "Other", idempotency_key="k-1", fingerprint="g")


def test_a_key_holding_no_response_is_in_use() -> None:
    request = IdempotentRequest(ADMIN_SCOPE, OP_CREATE_MERCHANT, "r-1", "f")
    assert replayed(request, PriorRequest("f", b"sealed")) == b"sealed"
    for prior in (PriorRequest("f", None), PriorRequest(None, None)):
        with pytest.raises(Aborted) as raised:
            replayed(request, prior)
        assert raised.value.reason == "IDEMPOTENCY_KEY_IN_USE"
    with pytest.raises(AlreadyExists):
        replayed(request, PriorRequest("g", None))


async def test_a_stored_response_opens_only_under_its_own_key(auth: Auth) -> None:
    from pi.auth.app.idempotency import SealedResponses
    from pi.platform.security.crypto import DecryptionError

    sealed = SealedResponses(auth.master_keys)
    request = IdempotentRequest(ADMIN_SCOPE, OP_CREATE_MERCHANT, "r-1", "f")
    elsewhere = IdempotentRequest("mer_1", OP_CREATE_MERCHANT, "r-1", "f")
    stored = sealed.seal(request, {"secret": "sk_x"})
    assert sealed.open(request, stored) == {"secret": "sk_x"}
    with pytest.raises(DecryptionError):
        sealed.open(elsewhere, stored)
    assert sealed.seal(IdempotentRequest(ADMIN_SCOPE, OP_CREATE_MERCHANT, None, "f"), {}) == b""
