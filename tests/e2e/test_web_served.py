"""How the edge serves web/dist: the security headers, gzip, caching, GET only; and the
API beside it unchanged (no compression, JSON 404 for unknown paths)."""

from __future__ import annotations

import gzip

import pytest

from pi.edge.static import CONTENT_SECURITY_POLICY
from tests.e2e.conftest import WEB_DIST, Merchant, Mesh

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _built() -> None:
    assert (WEB_DIST / "index.html").is_file(), f"{WEB_DIST} is not built: run `make web`"


def test_the_dashboard_carries_the_security_headers(mesh: Mesh) -> None:
    for path in ("/", "/index.html"):
        page = mesh.request("GET", path, headers={"accept": "text/html"})
        assert page.status == 200, page
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert csp == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-cache"
        assert page.body == (WEB_DIST / "index.html").read_bytes()


def test_text_files_are_gzipped_and_hashed_assets_cached_for_good(mesh: Mesh) -> None:
    scripts = sorted(p for p in (WEB_DIST / "assets").glob("index-*.js"))
    assert scripts, "web/dist has no dashboard script"
    path = f"/assets/{scripts[0].name}"
    zipped = mesh.request("GET", path, headers={"accept-encoding": "gzip"})
    assert zipped.status == 200, zipped
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["content-type"] == "text/javascript; charset=utf-8"
    assert zipped.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert gzip.decompress(zipped.body) == scripts[0].read_bytes()
    assert len(zipped.body) < scripts[0].stat().st_size / 2
    plain = mesh.request("GET", path)
    assert "content-encoding" not in plain.headers
    assert plain.body == scripts[0].read_bytes()


def test_only_get_and_head_are_served(mesh: Mesh) -> None:
    assert mesh.request("HEAD", "/").status == 200
    posted = mesh.request("POST", "/", raw=b"{}")
    assert posted.status == 404, posted
    assert posted.json()["code"] == 5


def test_the_api_beside_it_is_unchanged(mesh: Mesh, merchant: Merchant) -> None:
    listed = mesh.request(
        "GET", "/v1/transactions", token=merchant.token, headers={"accept-encoding": "gzip"}
    )
    assert listed.status == 200, listed
    assert "content-encoding" not in listed.headers
    assert "content-security-policy" not in listed.headers
    assert listed.json() == {"transactions": [], "nextPageToken": ""}
    missing = mesh.request("GET", "/no/such/file.js")
    assert missing.status == 404, missing
    assert missing.headers["content-type"] == "application/json"
