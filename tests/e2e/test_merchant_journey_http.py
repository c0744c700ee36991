"""A merchant's journey over HTTP/JSON through Envoy, checked against the served OpenAPI.

create merchant (admin) → token → create transaction → card payment (manual capture) →
capture → partial refund → list transactions and payments page by page → the transaction
shows the amounts (movements reach the transaction service through the outbox).

Every 200 body is checked against the OpenAPI document the edge serves (GET /openapi.json):
it validates (JSON Schema 2020-12) against the operation's response schema, where every
field must be documented (so names are lowerCamelCase as documented), int64 values are
JSON strings matching their pattern and enums names from the documented list.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from jsonschema import Draft202012Validator

pytestmark = pytest.mark.e2e

APPROVE_CARD = "4242424242424242"
CARD = {"number": APPROVE_CARD, "expMonth": 12, "expYear": 2034, "cvc": "123"}
OUTBOX_WAIT = 10.0


# --- OpenAPI conformance -------------------------------------------------------------------


def as_response_schema(node: Any) -> Any:
    """A schema as a response must match it: write-only fields shown empty, and no field
    the document does not name (additionalProperties false where properties are listed)."""
    if isinstance(node, list):
        return [as_response_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: as_response_schema(value) for key, value in node.items()}
    properties = out.get("properties")
    if isinstance(properties, dict):
        # Input-only fields are printed as empty strings (every field is printed).
        hidden = {name for name, prop in properties.items() if prop.get("writeOnly")}
        out["properties"] = {k: {"const": ""} if k in hidden else v for k, v in properties.items()}
        if "required" in out:
            out["required"] = [name for name in out["required"] if name not in hidden]
        out.setdefault("additionalProperties", False)
    return out


def conform(openapi: dict[str, Any], value: Any, schema: dict[str, Any], where: str) -> None:
    """Asserts that `value` matches `schema` (JSON Schema 2020-12, as OpenAPI 3.1 uses)."""
    root = {**schema, "components": as_response_schema(openapi["components"])}
    errors = sorted(Draft202012Validator(root).iter_errors(value), key=lambda e: e.path)
    assert not errors, f"{where}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message[:300]}" for e in errors
    )


def response_schema(openapi: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The schema the OpenAPI document names for a 200 of `method path`."""
    operation = openapi["paths"][path][method.lower()]
    schema: dict[str, Any] = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return schema


def check(openapi: dict[str, Any], method: str, path: str, reply: Any) -> dict[str, Any]:
    """`reply` is a 200 whose JSON body matches the documented response; returns the body."""
    assert reply.status == 200, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    body: dict[str, Any] = reply.json()
    conform(openapi, body, response_schema(openapi, method, path), f"{method} {path}")
    return body


# --- the journey ---------------------------------------------------------------------------


def poll_transaction(mesh: Any, token: str, txn_id: str, **expected: str) -> dict[str, Any]:
    """GET the transaction until the expected fields show (movements come via the outbox)."""
    deadline = time.monotonic() + OUTBOX_WAIT
    while True:
        reply = mesh.request("GET", f"/v1/transactions/{txn_id}", token=token)
        assert reply.status == 200, reply
        transaction: dict[str, Any] = reply.json()["transaction"]
        if all(transaction.get(k) == v for k, v in expected.items()):
            return transaction
        if time.monotonic() > deadline:
            raise AssertionError(f"after {OUTBOX_WAIT}s {transaction} does not show {expected}")
        time.sleep(0.1)


def list_all(
    mesh: Any, openapi: dict[str, Any], path: str, items: str, token: str, **filters: str
) -> list[dict[str, Any]]:
    """Every page of a List call with page_size=2, following nextPageToken."""
    seen: list[dict[str, Any]] = []
    page_token = ""
    pages = 0
    while True:
        query = {"page_size": 2, **filters}
        if page_token:
            query["page_token"] = page_token
        reply = mesh.request("GET", path, token=token, query=query)
        body = check(openapi, "GET", path, reply)
        page = body.get(items, [])
        assert len(page) <= 2, body
        seen.extend(page)
        pages += 1
        assert pages < 20, "pagination never ends"
        page_token = body.get("nextPageToken", "")
        if not page_token:
            return seen
        assert page, f"an empty page with a next page token: {body}"


def test_merchant_journey_over_http(mesh: Any, openapi: dict[str, Any]) -> None:
    # The operator creates the merchant inside the mesh (the edge never routes the admin
    # API); the merchant exchanges its API key for a token over HTTP.
    made = mesh.create_merchant("HTTP journey")
    merchant = {
        "merchant": {"id": made.merchant_id},
        "apiKey": {"id": made.api_key_id},
        "apiKeySecret": made.api_key_secret,
    }
    issued = mesh.request(
        "POST",
        "/v1/auth/token",
        {"apiKeyId": merchant["apiKey"]["id"], "apiKeySecret": merchant["apiKeySecret"]},
    )
    token_body = check(openapi, "POST", "/v1/auth/token", issued)
    assert token_body["tokenType"] == "Bearer", token_body
    assert isinstance(token_body["expiresIn"], int) and 0 < token_body["expiresIn"] <= 900
    token = token_body["accessToken"]

    # A transaction of 50.00 USD (int64 sent as a string, as the OpenAPI documents).
    reply = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": "5000", "currency": "USD", "description": "Order 1", "metadata": {"o": "1"}},
        token=token,
        headers={"idempotency-key": f"txn-{uuid.uuid4()}"},
    )
    transaction = check(openapi, "POST", "/v1/transactions", reply)["transaction"]
    txn_id = transaction["id"]
    assert txn_id.startswith("txn_")
    assert transaction["merchantId"] == merchant["merchant"]["id"]
    assert transaction["amount"] == "5000"
    assert transaction["status"] == "TRANSACTION_STATUS_PENDING"
    assert transaction["capturedAmount"] == "0"  # zero amounts are printed, as strings
    assert transaction["metadata"] == {"o": "1"}

    # A card payment, authorized only (manual capture).
    reply = mesh.request(
        "POST",
        "/v1/payments",
        {
            "transactionId": txn_id,
            "method": "PAYMENT_METHOD_TYPE_CARD",
            "card": CARD,
            "captureMode": "CAPTURE_MODE_MANUAL",
        },
        token=token,
        headers={"idempotency-key": f"pay-{uuid.uuid4()}"},
    )
    assert APPROVE_CARD not in reply.text and '"123"' not in reply.text, "PAN/CVC echoed"
    payment = check(openapi, "POST", "/v1/payments", reply)["payment"]
    pay_id = payment["id"]
    assert pay_id.startswith("pay_")
    assert payment["status"] == "PAYMENT_STATUS_REQUIRES_CAPTURE", payment
    assert payment["amount"] == "5000"  # defaults to the transaction's amount
    assert payment["currency"] == "USD"
    assert payment["captureMode"] == "CAPTURE_MODE_MANUAL"
    assert payment["card"]["last4"] == "4242"
    assert payment["card"]["brand"] == "CARD_BRAND_VISA"
    assert payment["card"].get("number", "") == "" and payment["card"].get("cvc", "") == ""
    poll_transaction(
        mesh, token, txn_id, status="TRANSACTION_STATUS_AUTHORIZED", authorizedAmount="5000"
    )

    # Capture everything.
    reply = mesh.request(
        "POST",
        f"/v1/payments/{pay_id}:capture",
        {},
        token=token,
        headers={"idempotency-key": f"cap-{uuid.uuid4()}"},
    )
    payment = check(openapi, "POST", "/v1/payments/{id}:capture", reply)["payment"]
    assert payment["status"] == "PAYMENT_STATUS_SUCCEEDED", payment
    assert payment["capturedAmount"] == "5000"

    # Refund 15.00 of it.
    reply = mesh.request(
        "POST",
        f"/v1/payments/{pay_id}:refund",
        {"amount": "1500", "reason": "one item returned"},
        token=token,
        headers={"idempotency-key": f"ref-{uuid.uuid4()}"},
    )
    refunded = check(openapi, "POST", "/v1/payments/{id}:refund", reply)
    assert refunded["refund"]["amount"] == "1500"
    assert refunded["refund"]["paymentId"] == pay_id
    assert refunded["refund"]["status"] == "REFUND_STATUS_SUCCEEDED"
    assert refunded["payment"]["refundedAmount"] == "1500"
    assert refunded["payment"]["capturedAmount"] == "5000"

    # The payment reads back the same.
    payment = check(
        openapi,
        "GET",
        "/v1/payments/{id}",
        mesh.request("GET", f"/v1/payments/{pay_id}", token=token),
    )["payment"]
    assert (payment["capturedAmount"], payment["refundedAmount"]) == ("5000", "1500")

    # The transaction shows the money once the movements went through the outbox.
    shown = poll_transaction(
        mesh,
        token,
        txn_id,
        status="TRANSACTION_STATUS_PARTIALLY_REFUNDED",
        authorizedAmount="5000",
        capturedAmount="5000",
        refundedAmount="1500",
    )
    conform(
        openapi,
        shown,
        {"$ref": "#/components/schemas/pi.transactions.v1.Transaction"},
        "transaction",
    )

    # Four more transactions, each paid (automatic capture): 5 transactions, 5 payments.
    txn_ids = [txn_id]
    pay_ids = [pay_id]
    for n in range(4):
        reply = mesh.request(
            "POST", "/v1/transactions", {"amount": str(100 + n), "currency": "EUR"}, token=token
        )
        other = check(openapi, "POST", "/v1/transactions", reply)["transaction"]
        txn_ids.append(other["id"])
        reply = mesh.request(
            "POST",
            "/v1/payments",
            {"transactionId": other["id"], "method": "PAYMENT_METHOD_TYPE_CARD", "card": CARD},
            token=token,
        )
        paid = check(openapi, "POST", "/v1/payments", reply)["payment"]
        assert paid["status"] == "PAYMENT_STATUS_SUCCEEDED", paid
        assert paid["captureMode"] == "CAPTURE_MODE_AUTOMATIC", paid
        pay_ids.append(paid["id"])

    listed = list_all(mesh, openapi, "/v1/transactions", "transactions", token)
    ids = [t["id"] for t in listed]
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    assert sorted(ids) == sorted(txn_ids)
    assert ids == sorted(ids, reverse=True), "newest first (time-ordered ids)"

    listed = list_all(mesh, openapi, "/v1/payments", "payments", token)
    ids = [p["id"] for p in listed]
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    assert sorted(ids) == sorted(pay_ids)

    # Filters go through the query string too.
    only = list_all(mesh, openapi, "/v1/payments", "payments", token, transaction_id=txn_id)
    assert [p["id"] for p in only] == [pay_id]
    done = list_all(
        mesh,
        openapi,
        "/v1/transactions",
        "transactions",
        token,
        status="TRANSACTION_STATUS_PARTIALLY_REFUNDED",
    )
    assert [t["id"] for t in done] == [txn_id]


def test_openapi_is_served_and_names_every_route(mesh: Any, openapi: dict[str, Any]) -> None:
    assert openapi["openapi"] == "3.1.0"
    for path in ("/v1/auth/token", "/v1/api-keys", "/v1/transactions", "/v1/payments"):
        assert path in openapi["paths"], path
    # Nor what the edge never routes (CreateMerchant: inside the mesh only).
    assert "/v1/merchants" not in openapi["paths"]
    # Exactly the public services: nothing internal is documented.
    tags = {
        tag
        for item in openapi["paths"].values()
        for operation in item.values()
        for tag in operation.get("tags", [])
    }
    assert tags == {"AuthService", "TransactionService", "PaymentService"}, tags
    # JSON names as the transcoder prints them (lowerCamelCase), never proto snake_case.
    snake = [
        f"{name}.{field}"
        for name, definition in openapi["components"]["schemas"].items()
        for field in definition.get("properties", {})
        if "_" in field
    ]
    assert not snake, snake


def test_the_tls_listener_serves_json_too(mesh: Any, openapi: dict[str, Any]) -> None:
    merchant = mesh.create_merchant()
    reply = mesh.request(
        "POST",
        "/v1/transactions",
        {"amount": 700, "currency": "JPY"},
        token=merchant.token,
        tls=True,
    )
    transaction = check(openapi, "POST", "/v1/transactions", reply)["transaction"]
    assert transaction["amount"] == "700"  # a JSON number is accepted, a string comes back
    reply = mesh.request(
        "GET", f"/v1/transactions/{transaction['id']}", token=merchant.token, tls=True
    )
    fetched = check(openapi, "GET", "/v1/transactions/{id}", reply)["transaction"]
    assert fetched["id"] == transaction["id"]


def test_cancelling_a_transaction_voids_its_authorization(
    mesh: Any, openapi: dict[str, Any]
) -> None:
    """Transaction service → payment service (CloseTransaction) → outbox, through the edge."""
    merchant = mesh.create_merchant()
    reply = mesh.request(
        "POST", "/v1/transactions", {"amount": "900", "currency": "USD"}, token=merchant.token
    )
    txn_id = check(openapi, "POST", "/v1/transactions", reply)["transaction"]["id"]
    reply = mesh.request(
        "POST",
        "/v1/payments",
        {
            "transactionId": txn_id,
            "method": "PAYMENT_METHOD_TYPE_CARD",
            "card": CARD,
            "captureMode": "CAPTURE_MODE_MANUAL",
        },
        token=merchant.token,
    )
    pay_id = check(openapi, "POST", "/v1/payments", reply)["payment"]["id"]

    reply = mesh.request("POST", f"/v1/transactions/{txn_id}:cancel", {}, token=merchant.token)
    cancelled = check(openapi, "POST", "/v1/transactions/{id}:cancel", reply)["transaction"]
    assert cancelled["status"] == "TRANSACTION_STATUS_CANCELLED", cancelled

    reply = mesh.request("GET", f"/v1/payments/{pay_id}", token=merchant.token)
    payment = check(openapi, "GET", "/v1/payments/{id}", reply)["payment"]
    assert payment["status"] == "PAYMENT_STATUS_CANCELLED", payment

    # A cancelled transaction takes no new payment.
    reply = mesh.request(
        "POST",
        "/v1/payments",
        {"transactionId": txn_id, "method": "PAYMENT_METHOD_TYPE_CARD", "card": CARD},
        token=merchant.token,
    )
    assert reply.status == 400, reply
    assert reply.json()["code"] == 9, reply  # FAILED_PRECONDITION
    assert reply.json()["details"][0]["reason"] == "TRANSACTION_CLOSED", reply
