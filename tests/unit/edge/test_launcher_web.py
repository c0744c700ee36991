"""`make run` and the web front end: Envoy serves web/dist when it is built, and the
banner says where the dashboard and the console are (or how to build them)."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest

from pi.launcher.banner import print_banner
from pi.launcher.console import Console
from pi.launcher.demo import DemoMerchant
from pi.launcher.options import LaunchOptions, generated_dir, web_dist_dir
from pi.launcher.preflight import prepare


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _route_names(bootstrap: dict[str, object]) -> list[str]:
    text = json.dumps(bootstrap)
    return [name for name in ("web:/", "web:/index.html") if f'"name": "{name}"' in text]


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    root.mkdir()
    (root / "index.html").write_text("<!doctype html>")
    return root


def test_the_default_web_dir_is_the_checkouts_web_dist() -> None:
    assert web_dist_dir() == Path(__file__).resolve().parents[3] / "web" / "dist"


@pytest.mark.parametrize("built", [True, False])
def test_envoy_serves_the_dashboard_only_when_it_is_built(
    built: bool, dist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (generated_dir() / "descriptors.binpb").is_file():
        pytest.skip("generated/descriptors.binpb is missing (make proto)")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    http, https, admin, base = _free_ports(4)
    options = LaunchOptions(
        var_dir=tmp_path / "state",
        grpc_port_base=base,
        http_port=http,
        https_port=https,
        admin_port=admin,
        web_dist=dist if built else tmp_path / "missing",
    )
    prepare(options, Console(io.StringIO()))
    bootstrap = json.loads((tmp_path / "state" / "envoy.json").read_text())
    assert _route_names(bootstrap) == (["web:/", "web:/index.html"] if built else [])


def test_the_banner_prints_the_dashboard_and_console_urls(dist: Path, tmp_path: Path) -> None:
    options = LaunchOptions(var_dir=tmp_path, http_port=18080, web_dist=dist)
    out = io.StringIO()
    merchant = DemoMerchant("mer_1", "key_1", "sk_1")
    print_banner(options, "somewhere", merchant, Console(out))
    text = out.getvalue()
    assert "Dashboard    http://127.0.0.1:18080/\n" in text
    assert "API console  http://127.0.0.1:18080/#/console" in text
    assert "Sign in to the dashboard at http://127.0.0.1:18080/ with this key id" in text


def test_the_banner_says_how_to_build_a_missing_dashboard(tmp_path: Path) -> None:
    options = LaunchOptions(var_dir=tmp_path, web_dist=tmp_path / "missing")
    out = io.StringIO()
    print_banner(options, "somewhere", None, Console(out))
    assert "run `make web`" in out.getvalue()
    assert "/#/console" not in out.getvalue()
