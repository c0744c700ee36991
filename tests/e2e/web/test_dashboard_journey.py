"""A merchant's day in the dashboard, in a real browser through the edge: sign in, create
a transaction, pay it with the 4242 card in manual capture, capture part, refund part; then
the transaction page shows PARTIALLY_REFUNDED with the right amounts. Signing out revokes
the token, and a session whose token is revoked elsewhere asks to sign in again."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Merchant, Mesh
from tests.e2e.web.conftest import Traffic, sign_in, token_id, until

pytestmark = pytest.mark.e2e


def test_journey_create_pay_capture_part_refund_part(
    page: Page, mesh: Mesh, merchant: Merchant, traffic: Traffic, output_path: str
) -> None:
    sign_in(page, merchant)
    expect(page.get_by_text("No transactions yet.")).to_be_visible()

    page.get_by_role("link", name="New transaction").first.click()
    page.get_by_label("Amount (USD)").fill("50.00")
    page.get_by_label("Description").fill("Order 1001: two mugs")
    page.get_by_label("Metadata").fill("order=1001")
    page.get_by_role("button", name="Create transaction").click()
    expect(page.locator("[data-field=status]")).to_have_text("TRANSACTION_STATUS_PENDING")
    transaction_id = page.url.rsplit("/", 1)[1]

    pay = page.get_by_role("form", name="Pay by card (sandbox)")
    pay.get_by_label("4242 4242 4242 4242: approved").check()
    pay.get_by_label("Manual: authorize now, capture later").check()
    pay.get_by_role("button", name="Pay").click()
    payment = page.locator("article.payment")
    expect(payment.locator(".status")).to_have_text("requires capture")
    expect(page.locator("[data-field=status]")).to_have_text("TRANSACTION_STATUS_AUTHORIZED")

    capture = payment.get_by_role("form", name="Capture payment")
    capture.get_by_label("Capture amount (USD)").fill("30.00")
    capture.get_by_role("button", name="Capture").click()
    expect(page.get_by_role("status").filter(has_text="Captured 30.00 USD")).to_be_visible()

    refund = payment.get_by_role("form", name="Refund payment")
    refund.get_by_label("Refund amount (USD)").fill("10.00")
    refund.get_by_label("Reason").fill("One mug arrived broken")
    refund.get_by_role("button", name="Refund").click()

    expect(page.locator("[data-field=status]")).to_have_text(
        "TRANSACTION_STATUS_PARTIALLY_REFUNDED"
    )
    expect(page.locator("[data-amount=amount]")).to_have_text("$50.00")
    expect(page.locator("[data-amount=authorized]")).to_have_text("$30.00")
    expect(page.locator("[data-amount=captured]")).to_have_text("$30.00")
    expect(page.locator("[data-amount=refunded]")).to_have_text("$10.00")
    expect(page.get_by_role("cell", name="One mug arrived broken")).to_be_visible()
    page.screenshot(path=Path(output_path) / "dashboard-transaction.png", full_page=True)

    # The page shows what the API holds.
    stored = mesh.request("GET", f"/v1/transactions/{transaction_id}", token=merchant.token)
    assert stored.status == 200, stored
    held = stored.json()["transaction"]
    assert held["status"] == "TRANSACTION_STATUS_PARTIALLY_REFUNDED"
    assert (held["authorizedAmount"], held["capturedAmount"], held["refundedAmount"]) == (
        "3000",
        "3000",
        "1000",
    )

    page.get_by_role("link", name="Transactions").first.click()
    row = page.locator(f"tr[data-transaction-id='{transaction_id}']")
    expect(row).to_contain_text("$50.00")
    expect(row).to_contain_text("partially refunded")
    expect(row).to_contain_text("Order 1001: two mugs")
    page.screenshot(path=Path(output_path) / "dashboard-transactions.png", full_page=True)

    # The filters are the API's: another status hides it, its own shows it.
    page.get_by_label("Status").select_option("TRANSACTION_STATUS_COMPLETED")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No transactions match these filters.")).to_be_visible()
    page.get_by_label("Status").select_option("TRANSACTION_STATUS_PARTIALLY_REFUNDED")
    page.get_by_role("button", name="Apply filters").click()
    expect(row).to_be_visible()

    # The token lives in memory only.
    stored_state = page.evaluate(
        "() => [localStorage.length, sessionStorage.length, document.cookie]"
    )
    assert stored_state == [0, 0, ""]
    assert page.context.cookies() == []


def test_list_pages_through_the_api_cursor_and_filters_by_date(
    page: Page, mesh: Mesh, merchant: Merchant
) -> None:
    for n in range(23):
        reply = mesh.request(
            "POST",
            "/v1/transactions",
            {"amount": str(100 + n), "currency": "JPY", "description": f"Item {n}"},
            token=merchant.token,
        )
        assert reply.status == 200, reply
    sign_in(page, merchant)
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(20)
    expect(rows.first).to_contain_text("Item 22")
    expect(rows.first).to_contain_text("¥122")  # JPY has no minor unit
    page.get_by_role("button", name="Next page").click()
    expect(rows).to_have_count(3)
    expect(rows.last).to_contain_text("Item 0")
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    page.get_by_role("button", name="Previous page").click()
    expect(rows).to_have_count(20)

    page.get_by_label("Created to").fill("2001-01-01")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No transactions match these filters.")).to_be_visible()


def test_sign_out_revokes_the_token_and_a_revoked_session_asks_to_sign_in_again(
    page: Page, mesh: Mesh, merchant: Merchant, traffic: Traffic
) -> None:
    sign_in(page, merchant)
    first = traffic.authorizations[-1]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    until(lambda: mesh.request("GET", "/v1/transactions", token=first.split()[1]).status == 401)

    # A token revoked behind the dashboard's back: the next call ends the session.
    sign_in(page, merchant)
    second = traffic.authorizations[-1]
    assert second != first
    revoked = mesh.request(
        "POST", "/v1/auth/token:revoke", {"tokenId": token_id(second)}, token=second.split()[1]
    )
    assert revoked.status == 200, revoked
    until(lambda: mesh.request("GET", "/v1/transactions", token=second.split()[1]).status == 401)
    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_text("Your session has ended")).to_be_visible()
    expect(page.get_by_label("API key id")).to_be_visible()


def test_an_authorization_is_cancelled_after_a_confirmation(
    page: Page, mesh: Mesh, merchant: Merchant
) -> None:
    sign_in(page, merchant)
    page.goto("/#/transactions/new")
    page.get_by_label("Amount (USD)").fill("20")
    page.get_by_role("button", name="Create transaction").click()
    pay = page.get_by_role("form", name="Pay by card (sandbox)")
    pay.get_by_label("Manual: authorize now, capture later").check()
    pay.get_by_role("button", name="Pay").click()
    payment = page.locator("article.payment")
    expect(payment.locator(".status")).to_have_text("requires capture")

    payment.get_by_role("button", name="Cancel payment").click()
    confirm = payment.get_by_role("group", name="Confirm cancellation")
    confirm.get_by_role("button", name="Keep it").click()
    expect(payment.locator(".status")).to_have_text("requires capture")
    payment.get_by_role("button", name="Cancel payment").click()
    confirm.get_by_role("button", name="Yes, cancel payment").click()
    expect(payment.locator(".status")).to_have_text("cancelled")
    expect(page.locator("[data-amount=authorized]")).to_have_text("$0.00")
    payment_id = payment.get_attribute("data-payment-id")
    stored = mesh.request("GET", f"/v1/payments/{payment_id}", token=merchant.token)
    assert stored.json()["payment"]["status"] == "PAYMENT_STATUS_CANCELLED"
