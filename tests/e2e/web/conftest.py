"""Browser tests of the dashboard and the API console: Debian's chromium driven by
Playwright (pytest-playwright), against the e2e mesh through Envoy, which serves web/dist.

Every test runs in a fresh browser context (so a fresh, signed-out tab) in which every
request is watched: one that leaves loopback is aborted and fails the test at teardown,
as does an error in the browser console (a CSP violation shows up there). Screenshots go
to the test's output folder (pytest-playwright's `--output`, `test-results/` by default).
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    BrowserType,
    Page,
    Playwright,
    Request,
    Route,
    expect,
    sync_playwright,
)

from tests.e2e.conftest import WEB_DIST, Merchant, Mesh

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


def _chromium() -> str:
    found = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(found).is_file(), "Debian's chromium is needed: apt-get install chromium"
    return found


# pytest-playwright keeps one Playwright (and so its event loop, which sync Playwright leaves
# set as the thread's running loop) for the whole session, and every async test after the
# browser tests would then fail with "cannot be called from a running event loop". One per
# module instead: gone before the next module's tests run.
@pytest.fixture(scope="module")
def playwright(_pw_api_request_contexts: Any) -> Iterator[Playwright]:
    pw = sync_playwright().start()
    if _pw_api_request_contexts:
        _pw_api_request_contexts.instrument(pw)
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def browser_type(playwright: Playwright, browser_name: str) -> BrowserType:
    return cast(BrowserType, getattr(playwright, browser_name))


@pytest.fixture(scope="module")
def launch_browser(
    browser_type_launch_args: dict[str, Any], browser_type: BrowserType
) -> Callable[..., Browser]:
    def launch(**kwargs: Any) -> Browser:
        return browser_type.launch(**{**browser_type_launch_args, **kwargs})

    return launch


@pytest.fixture(scope="module")
def browser(launch_browser: Callable[..., Browser]) -> Iterator[Browser]:
    launched = launch_browser()
    yield launched
    launched.close()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    # Playwright cannot download its own browsers here; as root chromium needs --no-sandbox.
    args = [*browser_type_launch_args.get("args", []), "--no-sandbox"]
    return {**browser_type_launch_args, "executable_path": _chromium(), "args": args}


@pytest.fixture(scope="module")
def browser_context_args(base_url: str) -> dict[str, Any]:
    # Replaces pytest-playwright's (session-scoped, it needs the session's Playwright for
    # --device emulation, which these tests do not use).
    return {"base_url": base_url, "locale": "en-US", "timezone_id": "UTC"}


@pytest.fixture(scope="session")
def base_url(mesh: Mesh) -> str:
    assert (WEB_DIST / "index.html").is_file(), f"{WEB_DIST} is not built: run `make web`"
    return mesh.http_base


@dataclass
class Traffic:
    """What the browser asked for: every URL, those refused, console errors, dialogs."""

    urls: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)


@pytest.fixture(autouse=True)
def traffic(context: BrowserContext) -> Iterator[Traffic]:
    """Blocks and records every request that is not to loopback (the offline rule)."""
    seen = Traffic()

    def guard(route: Route, request: Request) -> None:
        seen.urls.append(request.url)
        authorization = request.headers.get("authorization")
        if authorization:
            seen.authorizations.append(authorization)
        host = urlsplit(request.url).hostname or ""
        if request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            seen.refused.append(request.url)
            route.abort("blockedbyclient")

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_console(message: Any) -> None:
        if message.type == "error":
            seen.console_errors.append(message.text)

    context.route("**/*", guard)
    context.on("dialog", on_dialog)
    context.on("console", on_console)
    yield seen
    assert seen.refused == [], f"requests that left loopback: {seen.refused}"
    # 4xx answers the page asked for on purpose are logged by the browser too.
    unexpected = [e for e in seen.console_errors if "status of 4" not in e]
    assert unexpected == [], f"errors in the browser console: {unexpected}"


def sign_in(page: Page, merchant: Merchant) -> None:
    page.goto("/")
    page.get_by_label("API key id").fill(merchant.api_key_id)
    page.get_by_label("API key secret").fill(merchant.api_key_secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Transactions", exact=True)).to_be_visible()
    expect(page.get_by_text("Loading transactions")).to_have_count(0)


def token_id(bearer: str) -> str:
    """The `jti` of a `Bearer <JWT>` header value (for revoking it from outside)."""
    payload = bearer.split(" ", 1)[1].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


def until(check: Any, timeout: float = 10.0) -> Any:
    """`check()`'s first truthy result, polling; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, "condition not met in time"
            return result
        time.sleep(0.2)
