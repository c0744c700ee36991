"""Routes that answer before the transcoder: 405 for undeclared methods, 401 without a token.

The transcoder only knows gRPC methods: a method no binding declares on a known path
(TRACE, DELETE, QUERY, ...) would be "Could not resolve" (404), and a call without an
`Authorization` header whose JSON body does not parse would be a 400 before any service
could say 401. These routes match the HTTP bindings of the public services'
`google.api.http` rules (read from the generated protos, so they follow the contract) and
answer both cases at the edge, as JSON `google.rpc.Status` (local_replies.py), with an
`Allow` header on the 405.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Iterable
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pool

from pi.edge._values import type_url
from pi.edge.config import PUBLIC_GRPC_SERVICES

_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# What `Allow` lists for the document route (routes.py serves GET /openapi.json).
OPENAPI_PATH = "/openapi.json"


@functools.cache
def http_bindings() -> tuple[tuple[str, str, str], ...]:
    """(HTTP method, path template, gRPC path) of every binding of the public services."""
    _import_generated()
    pool = descriptor_pool.Default()
    found: list[tuple[str, str, str]] = []
    for service_name in PUBLIC_GRPC_SERVICES.values():
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            found.extend(_bindings(service, method))
    return tuple(sorted(found))


def _import_generated() -> None:
    import generated.pi

    for module in pkgutil.walk_packages(generated.pi.__path__, "generated.pi."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)


def _bindings(
    service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor
) -> Iterable[tuple[str, str, str]]:
    options = method.GetOptions()
    # typed as a plain FieldDescriptor by the googleapis stubs, not as an extension
    http: Any = annotations_pb2.http
    if not options.HasExtension(http):
        return
    rule: http_pb2.HttpRule = options.Extensions[http]
    for binding in (rule, *rule.additional_bindings):
        pattern = binding.WhichOneof("pattern")
        if pattern is None:
            continue
        if pattern == "custom":
            verb, template = binding.custom.kind.upper(), binding.custom.path
        else:
            verb, template = pattern.upper(), getattr(binding, pattern)
        yield verb, template, f"/{service.full_name}/{method.name}"


def path_regex(template: str) -> str:
    """An RE2 regex for the paths a google.api.http template matches."""
    out = []
    for part in re.split(r"(\{[^}]*\})", template):
        if part.startswith("{"):
            pattern = part[1:-1].partition("=")[2] or "*"
            out.append(".+" if pattern == "**" else "[^/:]+" if pattern == "*" else "[^:]+")
        else:
            out.append(re.escape(part).replace(r"\*\*", ".+").replace(r"\*", "[^/:]+"))
    return "".join(out)


def _allowed(openapi: bool) -> dict[str, list[str]]:
    """Path regex -> the methods its bindings declare."""
    allowed: dict[str, set[str]] = {}
    for verb, template, _ in http_bindings():
        allowed.setdefault(path_regex(template), set()).add(verb)
    if openapi:
        allowed.setdefault(re.escape(OPENAPI_PATH), set()).add("GET")
    return {regex: sorted(methods) for regex, methods in sorted(allowed.items())}


def guard_routes(public_methods: Iterable[str], *, openapi: bool) -> list[dict[str, Any]]:
    """The 405 and 401 routes; `public_methods` are gRPC paths callable without a token."""
    needs_token: dict[str, set[str]] = {}
    public = set(public_methods)
    for verb, template, grpc_path in http_bindings():
        if grpc_path not in public:
            needs_token.setdefault(path_regex(template), set()).add(verb)
    routes = [_not_allowed(regex, methods) for regex, methods in _allowed(openapi).items()]
    routes += [_no_token(regex, sorted(methods)) for regex, methods in sorted(needs_token.items())]
    return routes


def _methods_regex(methods: list[str]) -> str:
    return "^(?:" + "|".join(methods) + ")$"


def _local(name: str, regex: str, headers: list[dict[str, Any]], status: int) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"safe_regex": {"regex": regex}, "headers": headers},
        "direct_response": {"status": status},
        # Answered here: the transcoder must not first fail on the path or the body.
        "typed_per_filter_config": {
            _TRANSCODER: {"@type": type_url(_FILTER_CONFIG), "disabled": True}
        },
    }


def _not_allowed(regex: str, methods: list[str]) -> dict[str, Any]:
    method = {
        "name": ":method",
        "string_match": {"safe_regex": {"regex": _methods_regex(methods)}},
        "invert_match": True,
    }
    route = _local(f"not-allowed:{regex}", regex, [method], 405)
    route["direct_response"]["body"] = {"inline_string": _not_allowed_message(methods)}
    route["response_headers_to_add"] = [
        {
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "header": {"key": "allow", "value": ", ".join(methods)},
        }
    ]
    return route


def _no_token(regex: str, methods: list[str]) -> dict[str, Any]:
    headers: list[dict[str, Any]] = [
        {"name": ":method", "string_match": {"safe_regex": {"regex": _methods_regex(methods)}}},
        {"name": "authorization", "present_match": False},
        # Native gRPC callers get their UNAUTHENTICATED from the service.
        {
            "name": "content-type",
            "string_match": {"prefix": "application/grpc"},
            "invert_match": True,
            "treat_missing_header_as_empty": True,
        },
    ]
    route = _local(f"no-token:{regex}", regex, headers, 401)
    route["direct_response"]["body"] = {"inline_string": TOKEN_MISSING_MESSAGE}
    return route


def query_without_body_mappers() -> list[dict[str, Any]]:
    """405 for QUERY without a content type, which Envoy refuses (400) before routing."""
    mappers = []
    for regex, methods in _allowed(openapi=True).items():
        filters = [
            {"status_code_filter": {"comparison": {"op": "EQ", "value": _uint("405q", 400)}}},
            _header("header_filter", ":method", {"exact": "QUERY"}),
            {"header_filter": {"header": {"name": "content-type", "present_match": False}}},
            _header("header_filter", ":path", {"safe_regex": {"regex": f"{regex}(?:\\?.*)?"}}),
        ]
        mappers.append(
            {
                "filter": {"and_filter": {"filters": filters}},
                "status_code": 405,
                "headers_to_add": [
                    {
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        "header": {"key": "allow", "value": ", ".join(methods)},
                    }
                ],
                "body": {"inline_string": _not_allowed_message(methods)},
                "body_format_override": {
                    "json_format": {"code": 12, "message": "%LOCAL_REPLY_BODY%", "details": []},
                    "content_type": "application/json",
                },
            }
        )
    return mappers


def _header(kind: str, name: str, match: dict[str, Any]) -> dict[str, Any]:
    return {kind: {"header": {"name": name, "string_match": match}}}


def _uint(key: str, value: int) -> dict[str, Any]:
    return {"runtime_key": f"pi.local_reply.{key}", "default_value": value}


def _not_allowed_message(methods: list[str]) -> str:
    return f"Method not allowed; this path takes {', '.join(methods)}."


TOKEN_MISSING_MESSAGE = "This call requires an `authorization: Bearer <token>` header."
