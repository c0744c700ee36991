"""API keys in the dashboard: a new key's secret is shown once and works; a revoked key
cannot sign in any more."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Merchant, Mesh
from tests.e2e.web.conftest import sign_in

pytestmark = pytest.mark.e2e


def _token_status(mesh: Mesh, key_id: str, secret: str) -> int:
    reply = mesh.request("POST", "/v1/auth/token", {"apiKeyId": key_id, "apiKeySecret": secret})
    return reply.status


def test_create_shows_the_secret_once_and_revoke_makes_the_key_unusable(
    page: Page, mesh: Mesh, merchant: Merchant, output_path: str
) -> None:
    sign_in(page, merchant)
    page.get_by_role("link", name="API keys").click()
    expect(page.locator(f"tr[data-key-id='{merchant.api_key_id}']")).to_contain_text("active")

    page.get_by_label("New key name").fill("Checkout server")
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("[data-secret]")
    expect(shown).to_be_visible()
    secret = shown.input_value()
    assert secret.startswith("sk_")
    region = page.get_by_role("region", name="New API key secret")
    new_key_id = region.locator("code").first.inner_text()
    assert new_key_id.startswith("key_") and new_key_id != merchant.api_key_id
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    region.get_by_role("button", name="Copy secret").click()
    expect(region.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert page.evaluate("() => navigator.clipboard.readText()") == secret
    row = page.locator(f"tr[data-key-id='{new_key_id}']")
    expect(row).to_contain_text("Checkout server")
    page.screenshot(path=Path(output_path) / "dashboard-api-keys.png", full_page=True)
    assert _token_status(mesh, new_key_id, secret) == 200

    # Once dismissed, the secret is nowhere on the page, and the list never shows it.
    region.get_by_role("button", name="I have saved it").click()
    expect(page.locator("[data-secret]")).to_have_count(0)
    assert secret not in page.content()

    row.get_by_role("button", name=f"Revoke key {new_key_id}").click()
    confirm = row.get_by_role("group", name=f"Confirm revoking key {new_key_id}")
    expect(confirm).to_be_visible()
    confirm.get_by_role("button", name="Yes, revoke").click()
    expect(row).to_contain_text("revoked")
    expect(page.get_by_role("status").filter(has_text="is revoked")).to_be_visible()
    assert _token_status(mesh, new_key_id, secret) == 401
    # The session's own key still works.
    assert _token_status(mesh, merchant.api_key_id, merchant.api_key_secret) == 200


def test_cancelling_the_confirmation_keeps_the_key(
    page: Page, mesh: Mesh, merchant: Merchant
) -> None:
    sign_in(page, merchant)
    page.goto("/#/api-keys")
    row = page.locator(f"tr[data-key-id='{merchant.api_key_id}']")
    row.get_by_role("button", name=f"Revoke key {merchant.api_key_id}").click()
    expect(row).to_contain_text("This session signed in with it.")
    row.get_by_role("button", name="Keep it").click()
    expect(row).to_contain_text("active")
    assert _token_status(mesh, merchant.api_key_id, merchant.api_key_secret) == 200
