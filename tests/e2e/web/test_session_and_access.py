"""The session ends when its token expires, and the dashboard is usable from the
keyboard with every control labelled."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import Merchant
from tests.e2e.web.conftest import sign_in

pytestmark = pytest.mark.e2e

# Every form control without an accessible name: no <label>, aria-label or aria-labelledby.
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((el) => el.type !== 'hidden')
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
    && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML)"""


def test_an_expired_token_asks_the_merchant_to_sign_in_again(
    page: Page, merchant: Merchant
) -> None:
    page.clock.install()
    sign_in(page, merchant)
    page.clock.fast_forward("14:00")
    expect(page.get_by_role("heading", name="Transactions", exact=True)).to_be_visible()
    page.clock.fast_forward("01:05")  # past the 15-minute token lifetime
    expect(page.get_by_text("Your session expired. Sign in again.")).to_be_visible()
    expect(page.get_by_label("API key id")).to_be_visible()
    expect(page.get_by_label("API key id")).to_have_value("")


def test_sign_in_and_navigation_work_from_the_keyboard(page: Page, merchant: Merchant) -> None:
    page.goto("/")
    page.get_by_label("API key id").focus()
    page.keyboard.type(merchant.api_key_id)
    page.keyboard.press("Tab")
    page.keyboard.type(merchant.api_key_secret)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Transactions", exact=True)).to_be_visible()

    # Focus is on the page's content; Shift+Tab goes back up to the main navigation, and
    # Enter follows a link and puts the focus on the new page.
    assert page.evaluate("() => document.activeElement.id") == "main"
    nav = page.get_by_role("navigation", name="Main")
    for _ in range(10):
        page.keyboard.press("Shift+Tab")
        if nav.get_by_role("link", name="API keys").evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("Shift+Tab never reached the API keys link")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    assert page.evaluate("() => document.activeElement.id") == "main"


def test_every_control_on_every_page_is_labelled(page: Page, merchant: Merchant) -> None:
    page.goto("/")
    assert page.evaluate(UNLABELLED) == []
    sign_in(page, merchant)
    assert page.evaluate(UNLABELLED) == []
    page.goto("/#/transactions/new")
    expect(page.get_by_role("button", name="Create transaction")).to_be_visible()
    assert page.evaluate(UNLABELLED) == []
    page.get_by_label("Amount (USD)").fill("12.34")
    page.get_by_role("button", name="Create transaction").click()
    expect(page.get_by_role("form", name="Pay by card (sandbox)")).to_be_visible()
    assert page.evaluate(UNLABELLED) == []
    page.get_by_label("Manual: authorize now, capture later").check()
    page.get_by_role("button", name="Pay").click()
    expect(page.get_by_role("form", name="Capture payment")).to_be_visible()
    assert page.evaluate(UNLABELLED) == []
    page.goto("/#/api-keys")
    expect(page.get_by_role("button", name="Create key")).to_be_visible()
    assert page.evaluate(UNLABELLED) == []
