"""`ObservedConnector`: processor calls timed by operation and outcome, authorizations
counted by outcome and decline reason, answers passed through unchanged."""

from __future__ import annotations

from datetime import date

from prometheus_client import REGISTRY

from pi.payments.adapters.processor import SandboxConnector
from pi.payments.adapters.processor.observed import ObservedConnector
from pi.payments.app.ports import Connector
from pi.payments.domain import (
    AuthorizeRequest,
    CardInput,
    PaymentMethodType,
    ProcessorOutcome,
    validate_payment_request,
)


def authorize(payment_id: str, number: str = "4242424242424242") -> AuthorizeRequest:
    request = validate_payment_request(
        transaction_id="txn_1",
        amount=0,
        method=PaymentMethodType.CARD,
        capture_mode=None,
        card=CardInput(number, 12, 2030, "123"),
        bank_transfer=None,
        wallet=None,
        today=date(2026, 6, 15),
    )
    return AuthorizeRequest(payment_id, "mer_1", 1000, "USD", True, request.details)


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_authorizations_are_counted_by_outcome_and_decline_reason() -> None:
    connector = ObservedConnector(SandboxConnector())
    assert isinstance(connector, Connector) and connector.name == "sandbox"
    approved = {"processor": "sandbox", "outcome": "APPROVED", "decline_reason": ""}
    declined = {"processor": "sandbox", "outcome": "DECLINED", "decline_reason": "CARD_DECLINED"}
    timed = {"processor": "sandbox", "operation": "authorize", "outcome": "DECLINED"}
    before = (
        _value("pi_authorizations_total", **approved),
        _value("pi_authorizations_total", **declined),
        _value("pi_processor_call_seconds_count", **timed),
    )

    ok = await connector.authorize(authorize("pay_1"))
    no = await connector.authorize(authorize("pay_2", "4000000000000002"))
    status = await connector.status("pay_2")

    assert ok.outcome is ProcessorOutcome.APPROVED and no.outcome is ProcessorOutcome.DECLINED
    assert status.outcome is ProcessorOutcome.DECLINED
    assert _value("pi_authorizations_total", **approved) == before[0] + 1
    assert _value("pi_authorizations_total", **declined) == before[1] + 1
    assert _value("pi_processor_call_seconds_count", **timed) == before[2] + 1
    status_timed = {"processor": "sandbox", "operation": "status", "outcome": "DECLINED"}
    assert _value("pi_processor_call_seconds_count", **status_timed) >= 1
