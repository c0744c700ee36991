"""What `make run` shows once the mesh is up: the addresses, a demo merchant, a curl example.

The demo merchant's key is checked through the edge (POST /v1/auth/token), so the example
printed is one that works right now.
"""

from __future__ import annotations

import asyncio

from pi.launcher import demo
from pi.launcher.console import Console
from pi.launcher.identities import identity
from pi.launcher.options import SERVICES, LaunchOptions


async def demo_merchant(
    options: LaunchOptions, env: dict[str, str], out: Console
) -> demo.DemoMerchant | None:
    """Reuse the stored demo merchant if its key still works through the edge, else create."""
    path = options.var / "demo-merchant.json"
    http_base = f"http://127.0.0.1:{options.http_port}"
    merchant = demo.load(path)
    if merchant is not None:
        status = await _token_status(http_base, merchant)
        if status == 200:
            return merchant
        if status not in (400, 401, 403, 404):
            out.say(f"!! the edge answered {status} to POST /v1/auth/token")
            return merchant
        out.say(f"the demo merchant in {path} is unknown to this database: creating a new one")
    try:
        merchant = await demo.create(
            f"127.0.0.1:{options.port('auth', 0)}",
            env["PI_ADMIN_TOKEN"],
            identity(options, "admin"),
        )
    except Exception as error:  # the platform still runs; only the demo is missing
        out.say(f"!! could not create the demo merchant: {error}")
        return None
    demo.save(path, merchant)
    status = await _token_status(http_base, merchant)
    if status != 200:
        out.say(f"!! POST /v1/auth/token through the edge answered {status}")
    return merchant


async def _token_status(http_base: str, merchant: demo.DemoMerchant) -> int:
    status = 0
    for _ in range(10):  # the edge may still be finding healthy upstreams
        try:
            status, _ = await demo.issue_token(http_base, merchant)
        except OSError:
            status = 0
        if status not in (0, 502, 503):
            break
        await asyncio.sleep(0.5)
    return status


def metrics_urls(options: LaunchOptions) -> list[tuple[str, str]]:
    """(process, URL) of every /metrics the mesh serves: each replica's, then Envoy's."""
    urls = [
        (
            f"{service}-{replica}",
            f"http://127.0.0.1:{options.metrics_port(service, replica)}/metrics",
        )
        for service in SERVICES
        for replica in range(options.replicas)
    ]
    urls.append(("envoy", f"http://127.0.0.1:{options.edge_metrics_port}/stats/prometheus"))
    return urls


def print_banner(
    options: LaunchOptions,
    store: str,
    merchant: demo.DemoMerchant | None,
    out: Console,
) -> None:
    """Where to reach the edge, and the demo merchant with an example to try."""
    http_base = f"http://127.0.0.1:{options.http_port}"
    ca = options.var / "certs" / "ca.pem"
    out.say()
    out.say(f"Pi Platform is running. Ctrl-C stops everything; the data stays in {store}.")
    if options.serves_web:
        out.say(f"  Dashboard    {http_base}/")
        out.say(f"  API console  {http_base}/#/console   (sign in first: Try it uses your token)")
    else:
        out.say(f"  Dashboard    not built ({options.web_dist} is missing): run `make web`")
    out.say(f"  HTTP/JSON    {http_base}   (OpenAPI: {http_base}/openapi.json)")
    out.say(f"  HTTPS        https://localhost:{options.https_port}   (TLS 1.3; CA: {ca})")
    out.say(
        f"  gRPC         127.0.0.1:{options.http_port} (h2c), localhost:{options.https_port} (TLS)"
    )
    out.say(f"  Envoy admin  http://127.0.0.1:{options.admin_port}   logs: {options.var / 'log'}/")
    out.say("Metrics (Prometheus text):")
    for name, url in metrics_urls(options):
        out.say(f"  {name:<15}{url}")
    out.say(f"Traces ({options.trace_sample_percent:g}% of requests): {options.traces_path}")
    out.say("  a local Prometheus with the alert rules: make prometheus (http://127.0.0.1:9090)")
    if merchant is not None:
        out.say()
        out.say(
            f"Demo merchant {merchant.merchant_id}  (saved in {options.var}/demo-merchant.json)"
        )
        out.say(f"  API key id      {merchant.api_key_id}")
        out.say(f"  API key secret  {merchant.api_key_secret}")
        if options.serves_web:
            out.say(f"  Sign in to the dashboard at {http_base}/ with this key id and secret.")
        out.say()
        out.say("Try it:")
        for line in demo.curl_example(http_base, merchant).splitlines():
            out.say(f"  {line}")
    out.say()
