import io
import json
import logging

import pytest

from pi.payments.settings import PaymentsSettings
from pi.platform.runtime.logging import configure, redact


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        ("card 4242424242424242 declined", "4242424242424242"),
        ("card 4242 4242 4242 4242 declined", "4242 4242 4242 4242"),
        ("card 4000-0000-0000-0002", "4000-0000-0000-0002"),
        ("secret sk_live_0123456789abcdef", "sk_live_0123456789abcdef"),
        ("jwt eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig", "eyJzdWIiOiJ4In0"),
    ],
)
def test_redact_removes_credentials_and_card_numbers(text: str, leak: str) -> None:
    assert leak not in redact(text)


def test_redact_keeps_ordinary_numbers() -> None:
    assert redact("amount 1999 after 12 retries, id pay_01JD") == (
        "amount 1999 after 12 retries, id pay_01JD"
    )


def test_configure_writes_redacted_json_lines() -> None:
    env = {
        "DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
        "PI_ADMIN_TOKEN": "very-secret-admin",
        "PI_SERVICE_TOKEN": "very-secret-service",
        "PI_MASTER_KEYS": "1=" + "A" * 43 + "=",
        "PI_ENVIRONMENT": "development",
    }
    settings = PaymentsSettings.from_env(env)
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure(settings, stream=stream)
        log = logging.getLogger("pi.test")
        log.info(
            "got %s from %s",
            "very-secret-admin",
            "4111111111111111",
            extra={"pan": "5555555555554444"},
        )
        try:
            raise ValueError("token very-secret-service")
        except ValueError:
            log.exception("boom")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["level"] == "INFO"
    assert lines[0]["service"] == "payments"
    assert lines[0]["logger"] == "pi.test"
    output = stream.getvalue()
    for secret in (
        "very-secret-admin",
        "very-secret-service",
        "4111111111111111",
        "5555555555554444",
    ):
        assert secret not in output
    assert "ValueError" in lines[1]["exception"]
