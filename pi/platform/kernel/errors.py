"""Domain errors: what went wrong, in terms a client can act on.

Standard library only, so domain rules can raise them without knowing about gRPC. The one
place that turns them into a `google.rpc.Status` is `pi.platform.runtime.status`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class Code(enum.Enum):
    """The gRPC status a domain error is reported with (names match `grpc.StatusCode`)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    ABORTED = "ABORTED"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class FieldViolation:
    """One wrong input field: `field` is a proto path such as `payment.card.number`."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error a client is meant to see.

    `reason` is a stable UPPER_SNAKE identifier clients may branch on; `message` is for
    people and must never contain secrets or card data.
    """

    code: Code = Code.FAILED_PRECONDITION
    default_reason: str = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    code = Code.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations: tuple[FieldViolation, ...] = tuple(violations)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """The common case: exactly one field is wrong."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFound(DomainError):
    code = Code.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = Code.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = Code.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(DomainError):
    code = Code.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = Code.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    """A quota or rate limit is used up. `retry_after` (seconds), when known, tells the
    client when trying again can succeed; it is reported as a `google.rpc.RetryInfo`."""

    code = Code.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class Aborted(DomainError):
    code = Code.ABORTED
    default_reason = "ABORTED"


class Unavailable(DomainError):
    code = Code.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class ValidationErrors:
    """Collects every wrong field of a request so the client learns all of them at once."""

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._violations.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self._violations)

    def raise_if_any(self, message: str = "The request has invalid fields.") -> None:
        if self._violations:
            raise InvalidArgument(message, self._violations)
