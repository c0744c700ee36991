"""Merchant-provided text is rendered as text: markup in a description, metadata or a
refund reason shows as characters, never as elements, and runs nothing."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Merchant, Mesh
from tests.e2e.web.conftest import Traffic, sign_in

pytestmark = pytest.mark.e2e

PAYLOAD = "<img src=x onerror=alert(1)>"


def test_markup_in_merchant_text_renders_as_text_and_opens_no_dialog(
    page: Page, mesh: Mesh, merchant: Merchant, traffic: Traffic
) -> None:
    created = mesh.request(
        "POST",
        "/v1/transactions",
        {
            "amount": "700",
            "currency": "GBP",
            "description": PAYLOAD,
            "metadata": {"note": "<script>alert(2)</script>"},
        },
        token=merchant.token,
    )
    assert created.status == 200, created
    transaction_id = created.json()["transaction"]["id"]

    sign_in(page, merchant)
    row = page.locator(f"tr[data-transaction-id='{transaction_id}']")
    expect(row.locator("td.description")).to_have_text(PAYLOAD)
    page.get_by_role("link", name=transaction_id).click()
    expect(page.locator("[data-field=description]")).to_have_text(PAYLOAD)
    expect(page.get_by_text("<script>alert(2)</script>")).to_be_visible()

    pay = page.get_by_role("form", name="Pay by card (sandbox)")
    pay.get_by_role("button", name="Pay").click()
    refund = page.get_by_role("form", name="Refund payment")
    refund.get_by_label("Reason").fill(PAYLOAD)
    refund.get_by_role("button", name="Refund").click()
    expect(page.get_by_role("cell", name=PAYLOAD)).to_be_visible()

    page.wait_for_timeout(500)  # an onerror handler would have fired by now
    assert page.locator("img").count() == 0
    assert page.locator("main script").count() == 0
    assert traffic.dialogs == []
    # The payload's src=x was never requested.
    assert not [url for url in traffic.urls if url.rstrip("/").endswith("/x")]
