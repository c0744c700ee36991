import os

import pytest

from pi.platform.kernel.errors import InvalidArgument, ValidationErrors
from pi.platform.kernel.pages import PageToken, page_size
from pi.platform.kernel.text import printable_text
from pi.platform.security.crypto import MasterKeys


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in exc.value.violations]


def test_printable_text_accepts_unicode_text() -> None:
    assert printable_text("Café Zürich 東京 ✓", "display_name", 200) == "Café Zürich 東京 ✓"


@pytest.mark.parametrize(
    "value",
    [
        "bad\x00nul",
        "tab\there",
        "new\nline",
        "esc\x1b[31m",
        "del\x7f",
        "c1\x85",
        "zero\u200bwidth",
        "bidi\u202eoverride",
        "bom\ufeff",
        "line\u2028sep",
    ],
)
def test_printable_text_rejects_control_and_format_characters(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        printable_text(value, "display_name", 200)
    assert violations(info)[0][0] == "display_name"


def test_printable_text_length_is_counted_in_characters() -> None:
    assert printable_text("é" * 200, "name", 200) == "é" * 200
    with pytest.raises(InvalidArgument, match="1 to 200"):
        printable_text("é" * 201, "name", 200)


def test_printable_text_required_blank_and_surrounding_whitespace() -> None:
    with pytest.raises(InvalidArgument, match="is required"):
        printable_text("", "name", 10)
    assert printable_text("", "name", 10, required=False) == ""
    with pytest.raises(InvalidArgument, match="blank"):
        printable_text("   ", "name", 10, required=False)
    with pytest.raises(InvalidArgument, match="whitespace"):
        printable_text(" padded", "name", 10)


def test_printable_text_can_collect_every_wrong_field() -> None:
    errors = ValidationErrors()
    printable_text("", "a", 10, errors=errors)
    printable_text("x\x00", "b", 10, errors=errors)
    printable_text("fine", "c", 10, errors=errors)
    with pytest.raises(InvalidArgument) as info:
        errors.raise_if_any()
    assert [f for f, _ in violations(info)] == ["a", "b"]


def test_page_size_defaults_clamps_and_rejects_negative() -> None:
    assert page_size(0) == 20
    assert page_size(5) == 5
    assert page_size(100) == 100
    assert page_size(1000) == 100
    with pytest.raises(InvalidArgument) as info:
        page_size(-1)
    assert violations(info)[0][0] == "page_size"


@pytest.fixture
def tokens() -> PageToken:
    return PageToken(MasterKeys({1: os.urandom(32)}).derive_key("page-token"))


def test_page_token_round_trip(tokens: PageToken) -> None:
    filters = {"merchant": "mer_1", "status": "COMPLETED"}
    token = tokens.encode({"after": "pay_01", "t": 12}, filters)
    assert "pay_01" not in token or "." in token
    assert tokens.decode(token, dict(reversed(filters.items()))) == {"after": "pay_01", "t": 12}


def test_page_token_with_different_filters_is_invalid_argument(tokens: PageToken) -> None:
    token = tokens.encode({"after": "pay_01"}, {"merchant": "mer_1", "status": "COMPLETED"})
    with pytest.raises(InvalidArgument, match="different parameters") as info:
        tokens.decode(token, {"merchant": "mer_1", "status": "FAILED"})
    assert violations(info)[0][0] == "page_token"
    with pytest.raises(InvalidArgument):
        tokens.decode(token, {"merchant": "mer_2", "status": "COMPLETED"})


@pytest.mark.parametrize("mutate", ["garbage", "", ".", "a.b", "x" * 5000])
def test_malformed_page_tokens_are_invalid_argument(tokens: PageToken, mutate: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        tokens.decode(mutate)
    assert violations(info)[0][0] == "page_token"


def test_forged_page_tokens_are_rejected(tokens: PageToken) -> None:
    import base64
    import json

    token = tokens.encode({"after": "pay_01"})
    body, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=="))
    data["p"]["after"] = "pay_99"
    forged_body = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidArgument, match="not a valid page token"):
        tokens.decode(f"{forged_body}.{mac}")
    other = PageToken(os.urandom(32))
    with pytest.raises(InvalidArgument):
        other.decode(token)
