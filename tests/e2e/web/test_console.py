"""The API console (Swagger UI over /openapi.json): "Try it" sends a real request through
the edge with the signed-in merchant's token, and nothing is fetched from anywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Merchant, Mesh
from tests.e2e.web.conftest import Traffic, sign_in

pytestmark = pytest.mark.e2e


def test_try_it_lists_transactions_with_the_sessions_token(
    page: Page, mesh: Mesh, merchant: Merchant, traffic: Traffic, output_path: str
) -> None:
    created = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": "4200", "currency": "USD", "description": "Seen from the console"},
        token=merchant.token,
    )
    assert created.status == 200, created
    sign_in(page, merchant)
    session_token = traffic.authorizations[-1]
    page.get_by_role("link", name="API console").click()
    operation = page.locator("#operations-TransactionService-ListTransactions")
    expect(operation).to_be_visible(timeout=20_000)
    operation.locator(".opblock-summary").first.click()
    with page.expect_response(
        lambda r: (
            r.url.startswith(f"{mesh.http_base}/v1/transactions") and r.request.method == "GET"
        )
    ) as answered:
        operation.get_by_role("button", name="Execute").click()
    response = answered.value
    assert response.status == 200
    assert response.request.headers["authorization"] == session_token
    assert "Seen from the console" in response.text()
    status = operation.locator(".live-responses-table tr.response .response-col_status").first
    expect(status).to_have_text("200")
    expect(operation.locator(".live-responses-table")).to_contain_text("Seen from the console")
    page.screenshot(path=Path(output_path) / "console-try-it.png", full_page=True)


def test_dashboard_and_console_work_offline(
    page: Page, mesh: Mesh, merchant: Merchant, traffic: Traffic, output_path: str
) -> None:
    """Every page, with every non-loopback request blocked (the `traffic` guard): none is
    even attempted, no font, no CDN, no telemetry, and the console has no CSP violation."""
    sign_in(page, merchant)
    for link, ready in (
        ("New transaction", page.get_by_role("button", name="Create transaction")),
        ("API keys", page.get_by_role("button", name="Create key")),
        ("API console", page.locator("#operations-TransactionService-ListTransactions")),
    ):
        page.get_by_role("navigation", name="Main").get_by_role("link", name=link).click()
        expect(ready).to_be_visible(timeout=20_000)
    page.locator("#operations-TransactionService-ListTransactions .opblock-summary").first.click()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=Path(output_path) / "console.png", full_page=False)
    hosts = {url.split("/")[2] for url in traffic.urls if url.startswith("http")}
    assert hosts == {f"127.0.0.1:{mesh.http_port}"}, traffic.urls
    assert traffic.refused == []
    assert f"{mesh.http_base}/openapi.json" in traffic.urls
    assert traffic.console_errors == [], traffic.console_errors
