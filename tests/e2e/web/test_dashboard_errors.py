"""The API's own errors, where the merchant looks: a declined card on its payment, an
over-refund and a field violation next to the amount field they concern."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Merchant, Mesh
from tests.e2e.web.conftest import sign_in

pytestmark = pytest.mark.e2e


def _open_new_transaction(mesh: Mesh, merchant: Merchant, page: Page, amount: str) -> str:
    reply = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": amount, "currency": "EUR", "description": "Errors"},
        token=merchant.token,
    )
    assert reply.status == 200, reply
    transaction_id: str = reply.json()["transaction"]["id"]
    page.goto(f"/#/transactions/{transaction_id}")
    return transaction_id


def test_a_declined_card_shows_the_decline_on_its_payment(
    page: Page, mesh: Mesh, merchant: Merchant, output_path: str
) -> None:
    sign_in(page, merchant)
    _open_new_transaction(mesh, merchant, page, "2500")
    pay = page.get_by_role("form", name="Pay by card (sandbox)")
    pay.get_by_label("4000 0000 0000 0002: declined").check()
    pay.get_by_role("button", name="Pay").click()
    payment = page.locator("article.payment")
    expect(payment.locator(".status")).to_have_text("failed")
    expect(payment.locator("[data-failure-reason]")).to_have_text("Declined: card declined")
    assert payment.locator("[data-failure-reason]").get_attribute("data-failure-reason") == (
        "PAYMENT_FAILURE_REASON_CARD_DECLINED"
    )
    expect(page.locator("[data-field=status]")).to_have_text("TRANSACTION_STATUS_FAILED")
    # A failed transaction may be paid again: the form is still offered.
    expect(page.get_by_role("form", name="Pay by card (sandbox)")).to_be_visible()
    page.screenshot(path=Path(output_path) / "dashboard-declined.png", full_page=True)


def test_an_over_refund_shows_the_api_error_next_to_the_amount_field(
    page: Page, mesh: Mesh, merchant: Merchant, output_path: str
) -> None:
    sign_in(page, merchant)
    transaction_id = _open_new_transaction(mesh, merchant, page, "2500")
    page.get_by_role("form", name="Pay by card (sandbox)").get_by_role("button", name="Pay").click()
    payment = page.locator("article.payment")
    expect(payment.locator(".status")).to_have_text("succeeded")
    payment_id = payment.get_attribute("data-payment-id")

    refund = payment.get_by_role("form", name="Refund payment")
    refund.get_by_label("Refund amount (EUR)").fill("30.00")
    refund.get_by_label("Reason").fill("Too much")
    refund.get_by_role("button", name="Refund").click()

    # The same request straight to the API: the page shows its message, by the field.
    direct = mesh.request(
        "POST",
        f"/v1/payments/{payment_id}:refund",
        {"amount": "3000", "reason": "Too much"},
        token=merchant.token,
    )
    assert direct.status == 400, direct
    error = refund.locator("[data-field-error=amount]")
    expect(error).to_have_text(direct.json()["message"])
    amount = refund.get_by_label("Refund amount (EUR)")
    expect(amount).to_have_attribute("aria-invalid", "true")
    assert error.get_attribute("id") in (amount.get_attribute("aria-describedby") or "")
    page.screenshot(path=Path(output_path) / "dashboard-over-refund.png", full_page=True)

    stored = mesh.request("GET", f"/v1/transactions/{transaction_id}", token=merchant.token)
    assert stored.json()["transaction"]["refundedAmount"] == "0"


def test_a_field_violation_from_the_api_is_shown_next_to_its_field(
    page: Page, merchant: Merchant
) -> None:
    sign_in(page, merchant)
    page.goto("/#/transactions/new")
    page.get_by_label("Amount (USD)").fill("0")
    page.get_by_role("button", name="Create transaction").click()
    error = page.locator("[data-field-error=amount]")
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(page.get_by_label("Amount (USD)")).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url("/#/transactions/new")
