"""The web front end's routes (pi/edge/static.py): one per built file, with the security
headers, caching by name and gzip; Envoy accepts the config they make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pi.edge import render_bootstrap, validate, write_bootstrap
from pi.edge.profiles import local_config
from pi.edge.static import (
    CONTENT_SECURITY_POLICY,
    MAX_FILE_BYTES,
    StaticSite,
    compressor_filter,
    static_routes,
)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    (root / "assets" / "index-DPOyyXMo.js").write_text("console.log(1)")
    (root / "assets" / "index-uUETPUcF.css").write_text("body{}")
    (root / "favicon.png").write_bytes(b"\x89PNG")
    (root / "notes.md").write_text("not a served type")
    (root / "assets" / "app.js.map").write_text("{}")
    return root


def _headers(route: dict[str, Any]) -> dict[str, str]:
    return {h["header"]["key"]: h["header"]["value"] for h in route["response_headers_to_add"]}


def test_scan_lists_only_servable_types_as_posix_paths(dist: Path) -> None:
    site = StaticSite.scan(dist)
    assert site.files == (
        "assets/index-DPOyyXMo.js",
        "assets/index-uUETPUcF.css",
        "favicon.png",
        "index.html",
    )
    assert site.root == str(dist.absolute())
    assert StaticSite.scan(dist, served_from="/etc/pi/edge/web").root == "/etc/pi/edge/web"


def test_scan_needs_an_index_and_refuses_files_envoy_cannot_serve(
    dist: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="make web"):
        StaticSite.scan(tmp_path / "nothing")
    with open(dist / "assets" / "huge-ABCDEFGH.js", "wb") as huge:
        huge.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ValueError, match="larger than Envoy serves"):
        StaticSite.scan(dist)


def test_one_route_per_file_and_the_root_serves_index(dist: Path) -> None:
    routes = static_routes(StaticSite.scan(dist))
    by_path = {r["match"]["path"]: r for r in routes}
    assert sorted(by_path) == [
        "/",
        "/assets/index-DPOyyXMo.js",
        "/assets/index-uUETPUcF.css",
        "/favicon.png",
        "/index.html",
    ]
    for path in ("/", "/index.html"):
        body = by_path[path]["direct_response"]["body"]["filename"]
        assert body == f"{dist.absolute()}/index.html"
    for route in routes:
        method = route["match"]["headers"][0]
        assert method["name"] == ":method"
        assert method["string_match"]["safe_regex"]["regex"] == "GET|HEAD"
        filters = route["typed_per_filter_config"]
        assert filters["envoy.filters.http.grpc_json_transcoder"]["disabled"] is True
        assert "config" in filters["envoy.filters.http.compressor"]


def test_every_file_carries_the_security_headers_and_caching_follows_the_name(
    dist: Path,
) -> None:
    by_path = {r["match"]["path"]: _headers(r) for r in static_routes(StaticSite.scan(dist))}
    for headers in by_path.values():
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert by_path["/"]["content-type"] == "text/html; charset=utf-8"
    assert by_path["/"]["cache-control"] == "no-cache"
    assert by_path["/favicon.png"]["cache-control"] == "no-cache"
    js = by_path["/assets/index-DPOyyXMo.js"]
    assert js["content-type"] == "text/javascript; charset=utf-8"
    assert js["cache-control"] == "public, max-age=31536000, immutable"


def test_the_compressor_is_off_unless_a_route_turns_it_on() -> None:
    assert compressor_filter()["disabled"] is True


def _filters(bootstrap: dict[str, Any]) -> list[str]:
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return [f["name"] for f in hcm["http_filters"]]


def test_without_a_site_nothing_changes(descriptor_path: str) -> None:
    bootstrap = render_bootstrap(local_config(descriptor_path))
    assert "envoy.filters.http.compressor" not in _filters(bootstrap)


def test_envoy_accepts_a_config_serving_the_site(
    dist: Path, envoy_binary: Path, descriptor_path: str, tmp_path: Path
) -> None:
    config = local_config(descriptor_path, web=StaticSite.scan(dist))
    bootstrap = render_bootstrap(config)
    filters = _filters(bootstrap)
    assert filters.index("envoy.filters.http.compressor") < filters.index(
        "envoy.filters.http.grpc_json_transcoder"
    )
    target = tmp_path / "envoy.json"
    write_bootstrap(bootstrap, target)
    result = validate(target)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cli_renders_the_site_from_where_it_is_served(
    dist: Path, descriptor_path: str, tmp_path: Path
) -> None:
    from pi.edge.__main__ import main

    out = tmp_path / "envoy.json"
    code = main(
        [
            "render",
            "--profile",
            "kubernetes",
            "--descriptor",
            descriptor_path,
            "--out",
            str(out),
            "--web",
            str(dist),
            "--web-served-from",
            "/etc/pi/edge/web",
        ]
    )
    assert code == 0
    text = out.read_text()
    assert '"filename": "/etc/pi/edge/web/index.html"' in text
    assert str(dist) not in text
