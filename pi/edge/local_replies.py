"""Envoy's own error replies (unknown route, rate limited, malformed JSON, ...).

HTTP/JSON clients get them as a JSON `google.rpc.Status`, the same shape the transcoder
gives service errors, so a client parses one kind of error body whoever answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pi.edge.guards import query_without_body_mappers

# HTTP status of a local reply -> google.rpc.Code, for the JSON body HTTP clients get.
_LOCAL_REPLY_CODES: tuple[tuple[int, int], ...] = (
    (400, 3),  # INVALID_ARGUMENT: malformed JSON, unknown query parameter, bad path
    (401, 16),  # UNAUTHENTICATED
    (403, 7),  # PERMISSION_DENIED
    (404, 5),  # NOT_FOUND: no such route
    (405, 12),  # UNIMPLEMENTED: a method the path does not take (guards.py)
    (408, 4),  # DEADLINE_EXCEEDED: request not received in time
    (413, 3),  # INVALID_ARGUMENT: body too large
    (429, 8),  # RESOURCE_EXHAUSTED: rate limited
    (431, 3),  # INVALID_ARGUMENT: headers too large
    (503, 14),  # UNAVAILABLE
    (504, 4),  # DEADLINE_EXCEEDED
)

OVERFLOW_MESSAGE = "Overloaded: retry after the number of seconds in Retry-After."
OVERFLOW_RETRY_AFTER_S = 1

_LOCAL_REPLY_MESSAGES: Mapping[int, str] = {
    429: "Too many requests: retry after the number of seconds in Retry-After.",
}


def local_reply_config() -> dict[str, Any]:
    """JSON `google.rpc.Status` bodies for Envoy's own error replies to HTTP clients.

    Native gRPC requests are excluded: Envoy answers them with grpc-status and
    grpc-message, which a JSON body would garble.
    """
    mappers = [_token_missing_mapper(), *query_without_body_mappers(), _overflow_mapper()]
    mappers += [
        _status_mapper(
            {
                "status_code_filter": {
                    "comparison": {
                        "op": "EQ",
                        "value": _runtime_uint(f"pi.local_reply.{http}", http),
                    }
                }
            },
            grpc_code,
            message=_LOCAL_REPLY_MESSAGES.get(http),
        )
        for http, grpc_code in _LOCAL_REPLY_CODES
    ]
    mappers.append(
        _status_mapper(
            {
                "status_code_filter": {
                    "comparison": {"op": "GE", "value": _runtime_uint("pi.local_reply.other", 400)}
                }
            },
            2,  # UNKNOWN
        )
    )
    return {"mappers": mappers}


def _status_mapper(
    status_filter: dict[str, Any], grpc_code: int, message: str | None = None
) -> dict[str, Any]:
    mapper: dict[str, Any] = {
        "filter": {"and_filter": {"filters": [status_filter, _not_native_grpc()]}},
        "body_format_override": {
            "json_format": {"code": grpc_code, "message": "%LOCAL_REPLY_BODY%", "details": []},
            "content_type": "application/json",
        },
    }
    if message is not None:
        mapper["body"] = {"inline_string": message}
    return mapper


def _overflow_mapper() -> dict[str, Any]:
    """A call shed by a circuit breaker (response flag UO: too many requests in flight to
    the service) is a 503 UNAVAILABLE that says so and when to come back; it never
    reached the service, so a retry with the same Idempotency-Key is safe."""
    mapper = _status_mapper(
        {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": _runtime_uint("pi.local_reply.503", 503)}
            }
        },
        14,  # UNAVAILABLE
        message=OVERFLOW_MESSAGE,
    )
    mapper["filter"]["and_filter"]["filters"].append({"response_flag_filter": {"flags": ["UO"]}})
    mapper["headers_to_add"] = [
        {
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "header": {"key": "retry-after", "value": str(OVERFLOW_RETRY_AFTER_S)},
        }
    ]
    return mapper


def _token_missing_mapper() -> dict[str, Any]:
    """A 401 to a call without `Authorization` says so as the services do (TOKEN_MISSING)."""
    mapper = _status_mapper(
        {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": _runtime_uint("pi.local_reply.401", 401)}
            }
        },
        16,
    )
    mapper["filter"]["and_filter"]["filters"].append(
        {"header_filter": {"header": {"name": "authorization", "present_match": False}}}
    )
    mapper["body_format_override"]["json_format"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "TOKEN_MISSING",
            "domain": "pi.platform",
            "metadata": {},
        }
    ]
    return mapper


def _not_native_grpc() -> dict[str, Any]:
    """Matches requests from HTTP/JSON clients, transcoded or not.

    The transcoder rewrites content-type to application/grpc and records the client's
    method in x-envoy-original-method, so "not gRPC, or transcoded" is the HTTP client.
    """
    return {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                            "treat_missing_header_as_empty": True,
                        }
                    }
                },
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-method", "present_match": True}
                    }
                },
            ]
        }
    }


def _runtime_uint(key: str, value: int) -> dict[str, Any]:
    return {"runtime_key": key, "default_value": value}
