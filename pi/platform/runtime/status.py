"""The one place where domain errors become `google.rpc.Status` (and back).

A `DomainError` is reported as its gRPC code, its message, and the details
`ErrorInfo(reason, domain="pi.platform", metadata)`, plus `BadRequest` field violations
for `InvalidArgument` and `RetryInfo` for a `ResourceExhausted` that knows when to retry.
Envoy renders the same details as JSON for HTTP clients.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pi.platform.kernel.errors import (
    Aborted,
    AlreadyExists,
    Code,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

DOMAIN = "pi.platform"
INTERNAL_MESSAGE = "Internal error."
DETAILS_METADATA_KEY = "grpc-status-details-bin"

_ERROR_CLASSES: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def grpc_code(code: Code) -> grpc.StatusCode:
    return grpc.StatusCode[code.value]


def to_status_proto(error: DomainError) -> status_pb2.Status:
    """The `google.rpc.Status` message for a domain error."""
    code = grpc_code(error.code)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
        )
    ]
    violations = getattr(error, "violations", ())
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in violations
                    ]
                )
            )
        )
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(retry_after * 1e9)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=error.message, details=details)


def to_grpc_status(error: DomainError) -> grpc.Status:
    """The `grpc.Status` (code, message, details trailer) for a domain error."""
    return rpc_status.to_status(to_status_proto(error))  # type: ignore[no-any-return]  # grpc_status is untyped


def internal_status() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> NoReturn:
    """End the current grpc.aio call with the status of `error` (raises `AbortError`)."""
    status = to_grpc_status(error)
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
    raise AssertionError("context.abort returned")  # pragma: no cover


def error_from_rpc_error(error: grpc.RpcError) -> DomainError | None:
    """Rebuild the `DomainError` a downstream service reported, or None if it is not one.

    For clients of our own services: a NOT_FOUND from the transaction service becomes a
    `NotFound` with the same reason, so a use case can decide what it means for its own
    caller. INTERNAL and unknown codes return None (treat them as failures).
    """
    code = error.code() if hasattr(error, "code") else None
    cls = _ERROR_CLASSES.get(code) if isinstance(code, grpc.StatusCode) else None
    if cls is None:
        return None
    message = (error.details() if hasattr(error, "details") else None) or code.name  # type: ignore[union-attr]
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    status = _status_from_error(error)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason = info.reason or None
                metadata = dict(info.metadata)
            elif detail.Unpack(bad):
                violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Unpack(retry):
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        reason = reason or "DEADLINE_EXCEEDED"
    if cls is InvalidArgument:
        return InvalidArgument(message, violations, reason=reason, metadata=metadata)
    if cls is ResourceExhausted:
        return ResourceExhausted(message, reason=reason, metadata=metadata, retry_after=retry_after)
    return cls(message, reason=reason, metadata=metadata)


def _status_from_error(error: grpc.RpcError) -> status_pb2.Status | None:
    trailing: Any = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == DETAILS_METADATA_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
