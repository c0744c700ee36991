from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from pi.platform.kernel import errors
from pi.platform.runtime.status import DOMAIN, error_from_rpc_error, to_grpc_status, to_status_proto


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("nope"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("dup"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("state"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.ResourceExhausted("slow"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Aborted("race"), grpc.StatusCode.ABORTED),
        (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_domain_error_maps_to_its_grpc_code(
    error: errors.DomainError, code: grpc.StatusCode
) -> None:
    status = to_grpc_status(error)
    assert status.code == code
    assert status.details == error.message
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert isinstance(value, bytes)
    proto = status_pb2.Status.FromString(value)
    assert proto.code == code.value[0]
    info = error_details_pb2.ErrorInfo()
    assert proto.details[0].Unpack(info)
    assert info.reason == error.reason == code.name
    assert info.domain == DOMAIN == "pi.platform"


def test_error_info_carries_reason_and_metadata() -> None:
    error = errors.FailedPrecondition(
        "closed", reason="TRANSACTION_CLOSED", metadata={"transaction_id": "txn_1"}
    )
    proto = to_status_proto(error)
    info = error_details_pb2.ErrorInfo()
    proto.details[0].Unpack(info)
    assert info.reason == "TRANSACTION_CLOSED"
    assert dict(info.metadata) == {"transaction_id": "txn_1"}
    assert len(proto.details) == 1


def test_invalid_argument_adds_bad_request_field_violations() -> None:
    error = errors.InvalidArgument(
        "bad fields",
        [
            errors.FieldViolation("transaction.amount", "must be positive"),
            errors.FieldViolation("payment.card.number", "fails the Luhn check"),
        ],
    )
    proto = to_status_proto(error)
    bad = error_details_pb2.BadRequest()
    assert proto.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("transaction.amount", "must be positive"),
        ("payment.card.number", "fails the Luhn check"),
    ]


class _FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def test_a_downstream_status_turns_back_into_the_same_domain_error() -> None:
    original = errors.InvalidArgument.field("amount", "too big")
    rebuilt = error_from_rpc_error(_FakeRpcError(to_grpc_status(original)))
    assert isinstance(rebuilt, errors.InvalidArgument)
    assert rebuilt.reason == "INVALID_ARGUMENT"
    assert rebuilt.violations == original.violations
    closed = errors.FailedPrecondition("x", reason="TRANSACTION_CLOSED", metadata={"a": "b"})
    rebuilt = error_from_rpc_error(_FakeRpcError(to_grpc_status(closed)))
    assert isinstance(rebuilt, errors.FailedPrecondition)
    assert (rebuilt.reason, rebuilt.metadata, rebuilt.message) == (
        "TRANSACTION_CLOSED",
        {"a": "b"},
        "x",
    )
