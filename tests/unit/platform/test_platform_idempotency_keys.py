from collections.abc import Sequence

import pytest

from generated.pi.auth.v1 import auth_pb2
from pi.platform.kernel.errors import InvalidArgument
from pi.platform.runtime.idempotency import fingerprint, key_from


class _Context:
    def __init__(self, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._metadata = tuple(metadata)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_key_comes_from_request_id_or_header() -> None:
    assert key_from("req-1", _Context()) == "req-1"
    assert key_from("", _Context([("idempotency-key", "hdr-1")])) == "hdr-1"
    assert key_from("same", _Context([("idempotency-key", "same")])) == "same"
    assert key_from("", _Context()) is None
    assert key_from("", None) is None


def test_request_id_and_header_that_differ_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as info:
        key_from("a", _Context([("idempotency-key", "b")]))
    assert info.value.violations[0].field == "request_id"


@pytest.mark.parametrize("key", ["x" * 256, "has space", "tab\t", "é", "\x00"])
def test_keys_must_be_1_to_255_visible_ascii_characters(key: str) -> None:
    with pytest.raises(InvalidArgument):
        key_from(key, None)
    with pytest.raises(InvalidArgument) as info:
        key_from("", _Context([("idempotency-key", key)]))
    assert info.value.violations[0].field == "idempotency_key"


def test_a_255_character_key_is_fine() -> None:
    assert key_from("k" * 255, None) == "k" * 255


def test_fingerprint_ignores_request_id_only() -> None:
    a = auth_pb2.CreateMerchantRequest(display_name="Shop", request_id="r1")
    b = auth_pb2.CreateMerchantRequest(display_name="Shop", request_id="r2")
    c = auth_pb2.CreateMerchantRequest(display_name="Other", request_id="r1")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    assert a.request_id == "r1"  # the caller's message is not modified
    assert len(fingerprint(a)) == 64


def test_fingerprint_differs_between_message_types() -> None:
    assert fingerprint(auth_pb2.GetJwksRequest()) != fingerprint(
        auth_pb2.ListRevokedTokensRequest()
    )
