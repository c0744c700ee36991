"""gRPC status codes as go-grpc-prometheus labels them (`codes.Code.String()` in Go)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc

GO_CODE_NAMES: Mapping[grpc.StatusCode, str] = MappingProxyType(
    {
        grpc.StatusCode.OK: "OK",
        grpc.StatusCode.CANCELLED: "Canceled",
        grpc.StatusCode.UNKNOWN: "Unknown",
        grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
        grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
        grpc.StatusCode.NOT_FOUND: "NotFound",
        grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
        grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
        grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
        grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
        grpc.StatusCode.ABORTED: "Aborted",
        grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
        grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
        grpc.StatusCode.INTERNAL: "Internal",
        grpc.StatusCode.UNAVAILABLE: "Unavailable",
        grpc.StatusCode.DATA_LOSS: "DataLoss",
        grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
    }
)

SERVER_FAULT_CODES = frozenset(
    {"Unknown", "DeadlineExceeded", "Unimplemented", "Internal", "Unavailable", "DataLoss"}
)
"""The codes that spend the error budget: the server failed, not the caller. The alert
rules in k8s/monitoring select the same set."""


def go_name(code: grpc.StatusCode | None) -> str:
    """The Go spelling of `code`; None (a handler that returned normally) is OK."""
    if code is None:
        return "OK"
    return GO_CODE_NAMES.get(code, "Unknown")
