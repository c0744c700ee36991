"""The web front end (merchant dashboard and API console), served by Envoy itself.

Each built file of `web/dist` becomes one `direct_response` route (`/` serves
`index.html`): Envoy reads the files once, when it loads its config, and needs no other
process. Unknown paths still fall through to the API's JSON 404. `envoy.filters.http.
file_server` would do the same with fewer routes, but Envoy marks it work in progress and
outside its threat model: not on a payments edge.

Every file carries the same security headers: a Content-Security-Policy that allows
only the page's own origin (no inline script, no CDN, no framing), `nosniff`, no referrer.
Text files are gzip-compressed on the way out; the compressor filter is off for every
other route, so API responses cost no compression CPU.

`StaticSite.scan(dir)` lists the files; rendering the routes from it reads nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pi.edge._values import MIB, type_url

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        # Swagger UI's stylesheet draws its icons as data: SVG images; nothing else is relaxed.
        "img-src 'self' data:",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    )
)
"""The policy of every page and file the edge serves from `web/dist`."""

SECURITY_HEADERS: Mapping[str, str] = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}

CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
"""The file types served; a file of any other type in the directory is not."""

MAX_FILE_BYTES = 4 * MIB
"""Envoy's direct responses are capped (the route config's max_direct_response_body_size)."""

COMPRESSED_TYPES = (
    "text/html",
    "text/javascript",
    "text/css",
    "application/json",
    "image/svg+xml",
    "text/plain",
)

_IMMUTABLE = "public, max-age=31536000, immutable"
# A content hash in the name (Vite's `name-HASH.ext`): the file never changes under it.
_HASHED = re.compile(r"^assets/.+-[A-Za-z0-9_-]{8,}\.[a-z0-9]+$")
_COMPRESSOR = "envoy.filters.http.compressor"
_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_COMPRESSOR_PER_ROUTE = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"


@dataclass(frozen=True)
class StaticSite:
    """A directory of built files and the files in it to serve (POSIX paths, sorted)."""

    root: str
    files: tuple[str, ...]

    @classmethod
    def scan(cls, directory: str | Path, served_from: str | None = None) -> StaticSite:
        """The servable files under `directory`; `served_from` is where Envoy finds them
        (the same directory by default, or e.g. the path they are baked into an image at)."""
        base = Path(directory)
        if not (base / "index.html").is_file():
            raise FileNotFoundError(f"{base / 'index.html'} is missing: run `make web`")
        files = []
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            if path.suffix not in CONTENT_TYPES:
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"{path} is larger than Envoy serves ({MAX_FILE_BYTES} bytes)")
            files.append(path.relative_to(base).as_posix())
        return cls(served_from or str(base.absolute()), tuple(files))


def static_routes(site: StaticSite) -> list[dict[str, Any]]:
    """One route per file, `/` for index.html; GET and HEAD only."""
    routes = []
    for name in site.files:
        paths = ["/", "/index.html"] if name == "index.html" else [f"/{name}"]
        for path in paths:
            routes.append(_file_route(path, name, site.root))
    return routes


def compressor_filter() -> dict[str, Any]:
    """gzip for the static routes only: disabled unless a route enables it."""
    return {
        "name": _COMPRESSOR,
        "disabled": True,
        "typed_config": {
            "@type": type_url("envoy.extensions.filters.http.compressor.v3.Compressor"),
            "response_direction_config": {
                "common_config": {
                    "min_content_length": 256,
                    "content_type": list(COMPRESSED_TYPES),
                }
            },
            "compressor_library": {
                "name": "gzip",
                "typed_config": {
                    "@type": type_url("envoy.extensions.compression.gzip.compressor.v3.Gzip"),
                },
            },
        },
    }


def _file_route(path: str, name: str, root: str) -> dict[str, Any]:
    headers = {
        "content-type": CONTENT_TYPES[PurePosixPath(name).suffix],
        "cache-control": _IMMUTABLE if _HASHED.match(name) else "no-cache",
        **SECURITY_HEADERS,
    }
    return {
        "name": f"web:{path}",
        "match": {
            "path": path,
            "headers": [{"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}],
        },
        "direct_response": {"status": 200, "body": {"filename": f"{root.rstrip('/')}/{name}"}},
        "response_headers_to_add": [
            {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {"key": k, "value": v}}
            for k, v in headers.items()
        ],
        "typed_per_filter_config": {
            # Not a gRPC method: the transcoder (which rejects unknown methods) stays out.
            "envoy.filters.http.grpc_json_transcoder": {
                "@type": type_url(_FILTER_CONFIG),
                "disabled": True,
            },
            # Any per-route config enables a filter that is disabled by default.
            _COMPRESSOR: {
                "@type": type_url(_FILTER_CONFIG),
                "config": {
                    "@type": type_url(_COMPRESSOR_PER_ROUTE),
                    "overrides": {"response_direction_config": {}},
                },
            },
        },
    }
