"""How errors reach an HTTP/JSON client through Envoy: status codes and `google.rpc.Status`.

Service errors come back as `{"code", "message", "details": [ErrorInfo, BadRequest...]}`
with the HTTP status of the gRPC code; Envoy's own replies (unknown route, malformed JSON,
rate limited) use the same shape. No body ever carries a stack trace.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import grpc
import pytest

from generated.pi.transactions.v1 import transactions_pb2, transactions_pb2_grpc

pytestmark = pytest.mark.e2e

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
APPROVE_CARD = "4242424242424242"
DECLINE_CARD = "4000000000000002"
# What a leaked traceback or exception repr would look like.
STACK_TRACE = re.compile(
    r'Traceback \(most recent call last\)|File "[^"]+", line \d+|\.py", line|'
    r"\b(?:sqlalchemy|psycopg|aiosqlite|asyncio)\.|Exception:|Error\(",
)


def status_body(reply: Any, http_status: int, grpc_code: int) -> dict[str, Any]:
    """The reply is a JSON google.rpc.Status with these codes and no stack trace."""
    assert reply.status == http_status, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    assert not STACK_TRACE.search(reply.text), f"stack trace in the body: {reply.text}"
    body: dict[str, Any] = reply.json()
    assert body["code"] == grpc_code, body
    assert isinstance(body["message"], str) and body["message"].strip(), body
    assert isinstance(body.get("details", []), list), body
    return body


def detail(body: dict[str, Any], type_url: str) -> dict[str, Any]:
    found = [d for d in body.get("details", []) if d.get("@type") == type_url]
    assert found, f"no {type_url} in {body}"
    return found[0]


def error_info(body: dict[str, Any], reason: str) -> dict[str, Any]:
    info = detail(body, ERROR_INFO)
    assert info["reason"] == reason, body
    assert info["domain"] == "pi.platform", body
    return info


def new_transaction(mesh: Any, token: str, amount: int = 1000) -> dict[str, Any]:
    reply = mesh.request(
        "POST", "/v1/transactions", {"amount": str(amount), "currency": "USD"}, token=token
    )
    assert reply.status == 200, reply
    transaction: dict[str, Any] = reply.json()["transaction"]
    return transaction


def card_payment(
    mesh: Any, token: str, txn_id: str, number: str = APPROVE_CARD, **extra: Any
) -> Any:
    return mesh.request(
        "POST",
        "/v1/payments",
        {
            "transactionId": txn_id,
            "method": "PAYMENT_METHOD_TYPE_CARD",
            "card": {"number": number, "expMonth": 11, "expYear": 2033, "cvc": "321"},
            **extra,
        },
        token=token,
    )


# --- 400 -----------------------------------------------------------------------------------


def test_invalid_argument_is_400_with_field_violations(mesh: Any, merchant: Any) -> None:
    reply = mesh.request(
        "POST", "/v1/transactions", {"amount": "0", "currency": "usd"}, token=merchant.token
    )
    body = status_body(reply, 400, 3)
    error_info(body, "INVALID_ARGUMENT")
    violations = detail(body, BAD_REQUEST)["fieldViolations"]
    fields = {v["field"]: v["description"] for v in violations}
    assert set(fields) == {"transaction.amount", "transaction.currency"}, violations
    assert all(description.strip() for description in fields.values()), violations


def test_invalid_card_fields_name_each_field_without_echoing_the_card(
    mesh: Any, merchant: Any
) -> None:
    transaction = new_transaction(mesh, merchant.token)
    reply = mesh.request(
        "POST",
        "/v1/payments",
        {
            "transactionId": transaction["id"],
            "method": "PAYMENT_METHOD_TYPE_CARD",
            "card": {"number": "4242", "expMonth": 13, "expYear": 2033, "cvc": "x1"},
        },
        token=merchant.token,
    )
    body = status_body(reply, 400, 3)
    fields = {v["field"] for v in detail(body, BAD_REQUEST)["fieldViolations"]}
    assert {"payment.card.number", "payment.card.exp_month", "payment.card.cvc"} <= fields
    assert '"x1"' not in reply.text


def test_malformed_json_is_400(mesh: Any, merchant: Any) -> None:
    reply = mesh.request(
        "POST", "/v1/transactions", raw=b'{"amount": "10", "currency":', token=merchant.token
    )
    status_body(reply, 400, 3)


def test_out_of_range_int64_is_400(mesh: Any, merchant: Any) -> None:
    reply = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": "99999999999999999999", "currency": "USD"},
        token=merchant.token,
    )
    status_body(reply, 400, 3)


def test_unknown_query_parameter_is_400(mesh: Any, merchant: Any) -> None:
    reply = mesh.request("GET", "/v1/transactions", token=merchant.token, query={"pagesize": 2})
    status_body(reply, 400, 3)


def test_forged_page_token_is_400(mesh: Any, merchant: Any) -> None:
    reply = mesh.request(
        "GET", "/v1/transactions", token=merchant.token, query={"page_token": "eyJ4IjoxfQ"}
    )
    body = status_body(reply, 400, 3)
    assert any(v["field"] == "page_token" for v in detail(body, BAD_REQUEST)["fieldViolations"])


# --- 401 / 403 / 404 -----------------------------------------------------------------------


def test_missing_token_is_401(mesh: Any) -> None:
    body = status_body(mesh.request("GET", "/v1/transactions"), 401, 16)
    error_info(body, "TOKEN_MISSING")


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtZXJfeCJ9.",  # alg none
        "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJtZXJfeCJ9.c2ln",  # unknown kid
    ],
    ids=["garbage", "alg-none", "bad-signature"],
)
def test_bad_token_is_401(mesh: Any, token: str) -> None:
    body = status_body(mesh.request("GET", "/v1/transactions", token=token), 401, 16)
    assert detail(body, ERROR_INFO)["reason"].startswith("TOKEN_"), body


def test_wrong_api_secret_is_401(mesh: Any, merchant: Any) -> None:
    reply = mesh.request(
        "POST",
        "/v1/auth/token",
        {"apiKeyId": merchant.api_key_id, "apiKeySecret": merchant.api_key_secret + "x"},
    )
    body = status_body(reply, 401, 16)
    assert merchant.api_key_secret not in reply.text
    assert detail(body, ERROR_INFO)["reason"], body


def test_revoked_token_is_401_at_every_service(mesh: Any, merchant: Any) -> None:
    """A revoked token is refused by auth, transactions and payments within a bounded delay
    (Redis pub/sub, with the periodic pull from auth as the backstop)."""
    reply = mesh.request(
        "POST",
        "/v1/auth/token",
        {"apiKeyId": merchant.api_key_id, "apiKeySecret": merchant.api_key_secret},
    )
    assert reply.status == 200, reply
    issued = reply.json()
    token = issued["accessToken"]
    routes = {
        "auth": "/v1/api-keys",
        "transactions": "/v1/transactions",
        "payments": "/v1/payments",
    }
    for path in routes.values():
        assert mesh.request("GET", path, token=token).status == 200

    reply = mesh.request(
        "POST", "/v1/auth/token:revoke", {"tokenId": issued["tokenId"]}, token=token
    )
    assert reply.status == 200, reply
    revoked_at = time.monotonic()
    bound = 2 * float(mesh.env["PI_REVOCATION_POLL_SECONDS"]) + 1
    pending = dict(routes)
    while pending and time.monotonic() - revoked_at < bound:
        for service, path in list(pending.items()):
            reply = mesh.request("GET", path, token=token)
            if reply.status == 401:
                error_info(status_body(reply, 401, 16), "TOKEN_REVOKED")
                del pending[service]
        time.sleep(0.05)
    assert not pending, f"still accepting a revoked token after {bound}s: {sorted(pending)}"
    # Other tokens of the same merchant keep working.
    assert mesh.request("GET", "/v1/transactions", token=merchant.token).status == 200


def test_admin_route_is_an_unknown_route_at_the_edge(mesh: Any, merchant: Any) -> None:
    reply = mesh.request("POST", "/v1/merchants", {"displayName": "Nope"}, token=merchant.token)
    status_body(reply, 404, 5)


def test_merchant_route_with_the_admin_token_is_401(mesh: Any) -> None:
    """Only auth holds the admin token: to the others it is no credential at all."""
    reply = mesh.request("GET", "/v1/transactions", token=mesh.admin_token)
    status_body(reply, 401, 16)


def test_other_merchants_objects_are_404(mesh: Any, merchant: Any) -> None:
    owner = merchant
    intruder = mesh.create_merchant()
    transaction = new_transaction(mesh, owner.token)
    reply = card_payment(mesh, owner.token, transaction["id"], captureMode="CAPTURE_MODE_MANUAL")
    assert reply.status == 200, reply
    payment = reply.json()["payment"]

    attempts = {
        "get transaction": ("GET", f"/v1/transactions/{transaction['id']}", None),
        "cancel transaction": ("POST", f"/v1/transactions/{transaction['id']}:cancel", {}),
        "get payment": ("GET", f"/v1/payments/{payment['id']}", None),
        "capture payment": ("POST", f"/v1/payments/{payment['id']}:capture", {}),
        "refund payment": ("POST", f"/v1/payments/{payment['id']}:refund", {}),
        "cancel payment": ("POST", f"/v1/payments/{payment['id']}:cancel", {}),
    }
    answers = {}
    for name, (method, path, body) in attempts.items():
        reply = mesh.request(method, path, body, token=intruder.token)
        answers[name] = status_body(reply, 404, 5)
        assert owner.merchant_id not in reply.text, reply
    # The same answer as for an id that never existed: no existence oracle.
    never = mesh.request(
        "GET", "/v1/transactions/txn_01JD0000000000000000000000", token=intruder.token
    )
    unknown = status_body(never, 404, 5)
    same_reason = detail(answers["get transaction"], ERROR_INFO)["reason"]
    assert detail(unknown, ERROR_INFO)["reason"] == same_reason
    # Paying another merchant's transaction is refused the same way.
    reply = card_payment(mesh, intruder.token, transaction["id"])
    status_body(reply, 404, 5)
    # The owner's payment is untouched.
    reply = mesh.request("GET", f"/v1/payments/{payment['id']}", token=owner.token)
    assert reply.status == 200 and reply.json()["payment"]["status"] == (
        "PAYMENT_STATUS_REQUIRES_CAPTURE"
    ), reply
    listed = mesh.request("GET", "/v1/transactions", token=owner.token)
    assert intruder.merchant_id not in listed.text


def test_unknown_path_is_404(mesh: Any, merchant: Any) -> None:
    for method, path in (
        ("GET", "/v1/nothing-here"),
        # `/` is the dashboard (tests/e2e/test_web_served.py); a path beside it is not.
        ("GET", "/dashboard"),
        ("POST", "/"),
        ("POST", "/v2/transactions"),
    ):
        status_body(mesh.request(method, path, token=merchant.token), 404, 5)


def test_a_method_the_path_does_not_declare_is_405_with_allow(mesh: Any, merchant: Any) -> None:
    for method, path, allow in (
        ("DELETE", "/v1/transactions", "GET, POST"),
        ("TRACE", "/v1/payments/pay_1", "GET"),
        ("PUT", "/v1/payments/pay_1:refund", "POST"),
    ):
        reply = mesh.request(method, path, token=merchant.token)
        status_body(reply, 405, 12)
        assert reply.headers.get("allow") == allow


def test_no_token_is_401_even_when_the_body_does_not_parse(mesh: Any) -> None:
    reply = mesh.request("POST", "/v1/transactions", raw=b'{"amount": ')
    body = status_body(reply, 401, 16)
    assert body["details"][0]["reason"] == "TOKEN_MISSING"


# --- 409 and idempotent replay -------------------------------------------------------------


def test_idempotency_key_reuse(mesh: Any, merchant: Any) -> None:
    key = f"order-{uuid.uuid4()}"
    headers = {"idempotency-key": key}
    first = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": "1234", "currency": "USD"},
        token=merchant.token,
        headers=headers,
    )
    assert first.status == 200, first

    different = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": "1235", "currency": "USD"},
        token=merchant.token,
        headers=headers,
    )
    body = status_body(different, 409, 6)  # ALREADY_EXISTS
    error_info(body, "IDEMPOTENCY_KEY_REUSED")

    replay = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": "1234", "currency": "USD"},
        token=merchant.token,
        headers=headers,
    )
    assert replay.status == 200, replay
    assert replay.json() == first.json()

    # Exactly one transaction came of it.
    listed = mesh.request("GET", "/v1/transactions", token=merchant.token).json()
    assert [t["id"] for t in listed["transactions"]] == [first.json()["transaction"]["id"]]

    # Keys are scoped per merchant: another merchant may use the same key.
    other = mesh.create_merchant()
    theirs = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": "1235", "currency": "USD"},
        token=other.token,
        headers=headers,
    )
    assert theirs.status == 200, theirs
    assert theirs.json()["transaction"]["id"] != first.json()["transaction"]["id"]


def test_idempotent_payment_replay_charges_once(mesh: Any, merchant: Any) -> None:
    transaction = new_transaction(mesh, merchant.token, 2500)
    headers = {"idempotency-key": f"pay-{uuid.uuid4()}"}
    body = {
        "transactionId": transaction["id"],
        "method": "PAYMENT_METHOD_TYPE_CARD",
        "card": {"number": APPROVE_CARD, "expMonth": 11, "expYear": 2033, "cvc": "321"},
    }
    first = mesh.request("POST", "/v1/payments", body, token=merchant.token, headers=headers)
    second = mesh.request("POST", "/v1/payments", body, token=merchant.token, headers=headers)
    assert first.status == second.status == 200, (first, second)
    assert first.json() == second.json()
    reply = mesh.request(
        "GET",
        "/v1/payments",
        token=merchant.token,
        query={"transaction_id": transaction["id"]},
    )
    assert len(reply.json()["payments"]) == 1, reply


# --- business outcomes are not errors ------------------------------------------------------


def test_card_decline_is_a_200_with_a_failed_payment(mesh: Any, merchant: Any) -> None:
    transaction = new_transaction(mesh, merchant.token)
    reply = card_payment(mesh, merchant.token, transaction["id"], number=DECLINE_CARD)
    assert reply.status == 200, reply
    payment = reply.json()["payment"]
    assert payment["status"] == "PAYMENT_STATUS_FAILED", payment
    assert payment["failureReason"] == "PAYMENT_FAILURE_REASON_CARD_DECLINED", payment
    assert payment["capturedAmount"] == "0"
    assert DECLINE_CARD not in reply.text
    # The transaction may be paid again after a decline.
    deadline = time.monotonic() + 10
    while True:
        shown = mesh.request(
            "GET", f"/v1/transactions/{transaction['id']}", token=merchant.token
        ).json()["transaction"]
        if shown["status"] == "TRANSACTION_STATUS_FAILED" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert shown["status"] == "TRANSACTION_STATUS_FAILED", shown
    retry = card_payment(mesh, merchant.token, transaction["id"])
    assert retry.status == 200 and retry.json()["payment"]["status"] == (
        "PAYMENT_STATUS_SUCCEEDED"
    ), retry


def test_failed_precondition_is_400_with_a_reason(mesh: Any, merchant: Any) -> None:
    """Refunding more than was captured: FAILED_PRECONDITION, which HTTP maps to 400."""
    transaction = new_transaction(mesh, merchant.token, 1000)
    reply = card_payment(mesh, merchant.token, transaction["id"])
    assert reply.status == 200, reply
    payment_id = reply.json()["payment"]["id"]
    reply = mesh.request(
        "POST", f"/v1/payments/{payment_id}:refund", {"amount": "1001"}, token=merchant.token
    )
    assert reply.status == 400, reply
    body = reply.json()
    assert body["code"] in (3, 9), body  # INVALID_ARGUMENT or FAILED_PRECONDITION
    assert detail(body, ERROR_INFO)["reason"], body
    assert not STACK_TRACE.search(reply.text), reply


# --- 429 -----------------------------------------------------------------------------------


def test_rate_limited_is_429_for_json_and_resource_exhausted_for_grpc(
    mesh: Any, merchant: Any, throttled_edge: Any
) -> None:
    """The edge's local rate limit (a second Envoy whose bucket holds a few requests)."""
    burst = throttled_edge.requests_per_second
    replies = [
        throttled_edge.request("GET", "/v1/transactions", token=merchant.token)
        for _ in range(burst * 4)
    ]
    limited = [r for r in replies if r.status == 429]
    assert limited, [r.status for r in replies]
    assert {r.status for r in replies} <= {200, 429}, replies
    assert replies[0].status == 200, replies[0]
    body = status_body(limited[0], 429, 8)  # RESOURCE_EXHAUSTED
    assert limited[0].headers.get("retry-after") == "1", limited[0].headers

    # Native gRPC clients get RESOURCE_EXHAUSTED rather than a JSON body.
    request = transactions_pb2.ListTransactionsRequest(page_size=1)
    metadata = (("authorization", f"Bearer {merchant.token}"),)
    codes = []
    with grpc.insecure_channel(throttled_edge.grpc_target) as channel:
        stub = transactions_pb2_grpc.TransactionServiceStub(channel)
        for _ in range(burst * 4):
            try:
                stub.ListTransactions(request, metadata=metadata, timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes

    # The shared edge was not throttled by any of this.
    assert mesh.request("GET", "/v1/transactions", token=merchant.token).status == 200
    assert body["message"], body


def test_a_nul_in_an_identifier_is_a_client_error_not_a_500(mesh: Any, merchant: Any) -> None:
    """Found by `make fuzz`: PostgreSQL text cannot hold NUL, so it never reaches SQL."""
    listed = mesh.request("GET", "/v1/payments?transactionId=a%00b", token=merchant.token)
    status_body(listed, 400, 3)
    # Not an identifier the platform issues (visible ASCII): no payment has it.
    shown = mesh.request("GET", "/v1/payments/pay_%C3%A9", token=merchant.token)
    status_body(shown, 404, 5)
