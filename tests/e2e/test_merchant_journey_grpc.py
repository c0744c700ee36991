"""The merchant's journey over native gRPC through Envoy, in cleartext (h2c) and over TLS.

Also: the TLS listener speaks TLS 1.3 only (a TLS 1.2 client fails the handshake), and the
service-to-service APIs (AuthInternalService, TransactionLedgerService,
PaymentLedgerService) are not reachable through the edge, not even with the service token.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message as protobuf_message
from google.protobuf import timestamp_pb2

from generated.pi.auth.v1 import auth_pb2, auth_pb2_grpc
from generated.pi.payments.v1 import payments_pb2, payments_pb2_grpc
from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc
from pi.platform.runtime.callers import ALLOWED_CALLERS

pytestmark = pytest.mark.e2e

APPROVE_CARD = "4242424242424242"
OUTBOX_WAIT = 10.0
TIMEOUT = 10.0
T = transactions_pb2
P = payments_pb2


def card() -> payments_pb2.Card:
    return P.Card(number=APPROVE_CARD, exp_month=12, exp_year=2034, cvc="123")


@pytest.fixture(params=["h2c", "tls"])
def channel(request: pytest.FixtureRequest, mesh: Any) -> Iterator[grpc.Channel]:
    """A channel to Envoy: its cleartext port, or its TLS 1.3 port trusting the dev CA."""
    if request.param == "h2c":
        with grpc.insecure_channel(mesh.grpc_target) as plain:
            yield plain
        return
    with open(mesh.ca_file, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    with grpc.secure_channel(mesh.tls_target, credentials) as secure:
        yield secure


def bearer(token: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra.items())


def poll(
    fetch: Callable[[], T.Transaction], done: Callable[[T.Transaction], bool]
) -> T.Transaction:
    deadline = time.monotonic() + OUTBOX_WAIT
    while True:
        transaction = fetch()
        if done(transaction):
            return transaction
        if time.monotonic() > deadline:
            raise AssertionError(f"after {OUTBOX_WAIT}s: {transaction}")
        time.sleep(0.1)


def all_pages(call: Callable[..., Any], request: protobuf_message.Message, items: str) -> list[Any]:
    seen: list[Any] = []
    for _ in range(20):
        reply = call(request)
        page = list(getattr(reply, items))
        assert len(page) <= request.page_size  # type: ignore[attr-defined]
        seen.extend(page)
        if not reply.next_page_token:
            return seen
        assert page, "an empty page with a next page token"
        request.page_token = reply.next_page_token  # type: ignore[attr-defined]
    raise AssertionError("pagination never ends")


def test_merchant_journey_over_grpc(mesh: Any, channel: grpc.Channel) -> None:
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    transactions = transactions_pb2_grpc.TransactionServiceStub(channel)
    payments = payments_pb2_grpc.PaymentServiceStub(channel)

    # The admin API is inside the mesh only: the operator's certificate, straight to auth.
    with mesh.channel("auth", "admin") as admin:
        created = auth_pb2_grpc.AuthServiceStub(admin).CreateMerchant(
            auth_pb2.CreateMerchantRequest(
                display_name="gRPC journey", request_id=str(uuid.uuid4())
            ),
            metadata=bearer(mesh.admin_token),
            timeout=TIMEOUT,
        )
    assert created.merchant.id.startswith("mer_"), created.merchant
    assert created.api_key.state == auth_pb2.API_KEY_STATE_ACTIVE
    issued = auth.IssueToken(
        auth_pb2.IssueTokenRequest(
            api_key_id=created.api_key.id, api_key_secret=created.api_key_secret
        ),
        timeout=TIMEOUT,
    )
    assert issued.token_type == "Bearer"
    md = bearer(issued.access_token)

    def create_transaction(amount: int, currency: str = "USD") -> T.Transaction:
        reply = transactions.CreateTransaction(
            T.CreateTransactionRequest(
                transaction=T.Transaction(amount=amount, currency=currency),
                request_id=str(uuid.uuid4()),
            ),
            metadata=md,
            timeout=TIMEOUT,
        )
        return reply.transaction

    def get_transaction(txn_id: str) -> T.Transaction:
        return transactions.GetTransaction(
            T.GetTransactionRequest(id=txn_id), metadata=md, timeout=TIMEOUT
        ).transaction

    transaction = create_transaction(5000)
    assert transaction.status == T.TRANSACTION_STATUS_PENDING
    assert transaction.merchant_id == created.merchant.id

    # Manual capture; the Idempotency-Key travels as metadata and a retry replays.
    pay_request = P.CreatePaymentRequest(
        payment=P.Payment(
            transaction_id=transaction.id,
            method=P.PAYMENT_METHOD_TYPE_CARD,
            card=card(),
            capture_mode=P.CAPTURE_MODE_MANUAL,
        )
    )
    key = f"grpc-pay-{uuid.uuid4()}"
    payment = payments.CreatePayment(
        pay_request, metadata=(*md, ("idempotency-key", key)), timeout=TIMEOUT
    ).payment
    assert payment.status == P.PAYMENT_STATUS_REQUIRES_CAPTURE, payment
    assert payment.amount == 5000 and payment.currency == "USD"
    assert payment.card.last4 == "4242" and payment.card.brand == P.CARD_BRAND_VISA
    assert payment.card.number == "" and payment.card.cvc == ""
    replayed = payments.CreatePayment(
        pay_request, metadata=(*md, ("idempotency-key", key)), timeout=TIMEOUT
    ).payment
    assert replayed.id == payment.id and replayed.status == payment.status
    poll(lambda: get_transaction(transaction.id), lambda t: t.authorized_amount == 5000)

    captured = payments.CapturePayment(
        P.CapturePaymentRequest(id=payment.id, request_id=str(uuid.uuid4())),
        metadata=md,
        timeout=TIMEOUT,
    ).payment
    assert captured.status == P.PAYMENT_STATUS_SUCCEEDED and captured.captured_amount == 5000

    refunded = payments.RefundPayment(
        P.RefundPaymentRequest(
            id=payment.id, amount=1500, reason="partial", request_id=str(uuid.uuid4())
        ),
        metadata=md,
        timeout=TIMEOUT,
    )
    assert refunded.refund.amount == 1500 and refunded.refund.payment_id == payment.id
    assert refunded.refund.status == P.REFUND_STATUS_SUCCEEDED
    assert refunded.payment.refunded_amount == 1500

    shown = poll(
        lambda: get_transaction(transaction.id),
        lambda t: t.status == T.TRANSACTION_STATUS_PARTIALLY_REFUNDED,
    )
    assert (shown.authorized_amount, shown.captured_amount, shown.refunded_amount) == (
        5000,
        5000,
        1500,
    )
    assert shown.update_time.ToDatetime() >= shown.create_time.ToDatetime()

    # Five transactions with one payment each, listed two at a time.
    txn_ids = [transaction.id]
    pay_ids = [payment.id]
    for n in range(4):
        other = create_transaction(200 + n, "GBP")
        txn_ids.append(other.id)
        paid = payments.CreatePayment(
            P.CreatePaymentRequest(
                payment=P.Payment(
                    transaction_id=other.id, method=P.PAYMENT_METHOD_TYPE_CARD, card=card()
                ),
                request_id=str(uuid.uuid4()),
            ),
            metadata=md,
            timeout=TIMEOUT,
        ).payment
        assert paid.status == P.PAYMENT_STATUS_SUCCEEDED, paid
        pay_ids.append(paid.id)

    listed = all_pages(
        lambda r: transactions.ListTransactions(r, metadata=md, timeout=TIMEOUT),
        T.ListTransactionsRequest(page_size=2),
        "transactions",
    )
    ids = [t.id for t in listed]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(txn_ids), ids

    listed = all_pages(
        lambda r: payments.ListPayments(r, metadata=md, timeout=TIMEOUT),
        P.ListPaymentsRequest(page_size=2),
        "payments",
    )
    ids = [p.id for p in listed]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(pay_ids), ids

    # A time filter too: nothing was created after a minute from now.
    future = timestamp_pb2.Timestamp()
    future.FromSeconds(int(time.time()) + 60)
    none = transactions.ListTransactions(
        T.ListTransactionsRequest(page_size=2, create_time_start=future),
        metadata=md,
        timeout=TIMEOUT,
    )
    assert list(none.transactions) == [] and none.next_page_token == ""


# --- TLS -----------------------------------------------------------------------------------


def _handshake(mesh: Any, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    with (
        socket.create_connection(("127.0.0.1", mesh.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version(), tls.selected_alpn_protocol()


def test_tls_listener_speaks_tls13_with_h2(mesh: Any) -> None:
    context = ssl.create_default_context(cafile=mesh.ca_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    assert _handshake(mesh, context) == ("TLSv1.3", "h2")


def test_tls12_is_refused(mesh: Any) -> None:
    context = ssl.create_default_context(cafile=mesh.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _handshake(mesh, context)


def test_tls_listener_rejects_clients_that_do_not_trust_the_dev_ca(mesh: Any) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(mesh, ssl.create_default_context())


# --- internal services ---------------------------------------------------------------------

INTERNAL_CALLS = [
    pytest.param(
        auth_pb2_grpc.AuthInternalServiceStub,
        "ListRevokedTokens",
        auth_pb2.ListRevokedTokensRequest(),
        "auth",
        id="AuthInternalService.ListRevokedTokens",
    ),
    pytest.param(
        transactions_pb2_grpc.TransactionLedgerServiceStub,
        "LookupTransaction",
        T.LookupTransactionRequest(merchant_id="mer_x", transaction_id="txn_x"),
        "transactions",
        id="TransactionLedgerService.LookupTransaction",
    ),
    pytest.param(
        transactions_pb2_grpc.TransactionLedgerServiceStub,
        "ApplyMovement",
        T.ApplyMovementRequest(),
        "transactions",
        id="TransactionLedgerService.ApplyMovement",
    ),
    pytest.param(
        transactions_pb2_grpc.TransactionLedgerServiceStub,
        "ApplyMovements",
        T.ApplyMovementsRequest(),
        "transactions",
        id="TransactionLedgerService.ApplyMovements",
    ),
    pytest.param(
        payments_pb2_grpc.PaymentLedgerServiceStub,
        "CloseTransaction",
        P.CloseTransactionRequest(merchant_id="mer_x", transaction_id="txn_x", amount=1),
        "payments",
        id="PaymentLedgerService.CloseTransaction",
    ),
    pytest.param(
        payments_pb2_grpc.PaymentLedgerServiceStub,
        "RegisterTransactions",
        P.RegisterTransactionsRequest(),  # invalid: the direct call writes nothing
        "payments",
        id="PaymentLedgerService.RegisterTransactions",
    ),
]


@pytest.mark.parametrize(("stub_class", "method", "request_message", "service"), INTERNAL_CALLS)
def test_internal_services_are_not_routed_by_the_edge(
    mesh: Any,
    stub_class: Any,
    method: str,
    request_message: protobuf_message.Message,
    service: str,
) -> None:
    metadata: tuple[tuple[str, str], ...] = ()
    # Straight to the service, an allowed caller gets through (whatever the answer is, it
    # is not an authentication or routing failure): so the edge is what stops it below.
    full_name = stub_class.__name__.removesuffix("Stub")
    package = {"auth": "pi.auth.v1", "transactions": "pi.transactions.v1"}.get(
        service, "pi.payments.v1"
    )
    caller = sorted(ALLOWED_CALLERS[f"/{package}.{full_name}/{method}"])[0]
    with mesh.channel(service, caller) as direct:
        try:
            getattr(stub_class(direct), method)(request_message, metadata=metadata, timeout=5)
        except grpc.RpcError as error:
            assert error.code() not in (
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
            ), error

    with (
        grpc.insecure_channel(mesh.grpc_target) as edge,
        pytest.raises(grpc.RpcError) as raised,
    ):
        getattr(stub_class(edge), method)(request_message, metadata=metadata, timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED, raised.value

    # And over HTTP, the gRPC path of the method is an unknown route.
    reply = mesh.request("POST", f"/{package}.{full_name}/{method}", {})
    assert reply.status == 404, reply
