"""The OpenAPI 3.1 document `make proto` generates says what the protos and the edge do.

Checked on the committed document (tests/test_generated_fresh.py keeps it equal to a
fresh generation) and on the generator itself (scripts/openapi_document.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from pi.edge.routes import PUBLIC_METHODS as EDGE_PUBLIC_METHODS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import gen_protos  # noqa: E402
from openapi_document import render  # noqa: E402
from openapi_schemas import text_pattern  # noqa: E402

DOCUMENT: dict[str, Any] = json.loads((REPO / "generated/openapi/pi.openapi.json").read_text())
SCHEMAS = DOCUMENT["components"]["schemas"]


def operation(method: str, path: str) -> dict[str, Any]:
    result: dict[str, Any] = DOCUMENT["paths"][path][method]
    return result


def body_schema(method: str, path: str) -> dict[str, Any]:
    schema: dict[str, Any] = operation(method, path)["requestBody"]["content"]["application/json"][
        "schema"
    ]
    return schema


def test_is_openapi_3_1_with_a_bearer_scheme_and_public_token_operations() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert DOCUMENT["security"] == [{"bearer": []}]
    assert operation("post", "/v1/auth/token")["security"] == []
    assert operation("get", "/v1/auth/jwks")["security"] == []
    assert "security" not in operation("post", "/v1/payments")


def test_public_methods_are_the_auth_services_own_list() -> None:
    from pi.auth.bootstrap import PUBLIC_METHODS

    as_paths = {
        "/" + name.rsplit(".", 1)[0] + "/" + name.rsplit(".", 1)[1]
        for name in gen_protos.PUBLIC_METHODS
    }
    assert as_paths == set(PUBLIC_METHODS) == set(EDGE_PUBLIC_METHODS)


def test_the_document_offers_no_method_the_edge_does_not_route() -> None:
    from pi.edge import ADMIN_METHODS

    as_paths = {
        "/" + name.rsplit(".", 1)[0] + "/" + name.rsplit(".", 1)[1]
        for name in gen_protos.UNROUTED_METHODS
    }
    assert as_paths == set(ADMIN_METHODS)
    assert "/v1/merchants" not in DOCUMENT["paths"]
    ids = {op["operationId"] for path in DOCUMENT["paths"].values() for op in path.values()}
    assert not any("CreateMerchant" in operation_id for operation_id in ids)


def test_field_behaviour_maps_to_required_read_only_and_write_only() -> None:
    payment = SCHEMAS["pi.payments.v1.Payment"]
    assert set(payment["required"]) == {"transactionId", "method"}
    for name in ("id", "status", "capturedAmount", "createTime"):
        assert payment["properties"][name]["readOnly"] is True, name
    card = SCHEMAS["pi.payments.v1.Card"]
    assert card["properties"]["number"]["writeOnly"] is True
    assert card["properties"]["cvc"]["writeOnly"] is True
    assert set(card["required"]) == {"number", "expMonth", "expYear", "cvc"}


def test_int64_is_a_string_with_a_pattern_and_enums_are_listed() -> None:
    amount = SCHEMAS["pi.transactions.v1.Transaction"]["properties"]["amount"]
    assert amount["type"] == "string" and amount["format"] == "int64"
    assert re.fullmatch(amount["pattern"], "2500") and not re.fullmatch(amount["pattern"], "-1")
    status = SCHEMAS["pi.payments.v1.PaymentStatus"]
    assert "PAYMENT_STATUS_SUCCEEDED" in status["enum"]


def test_bounds_come_from_the_constraints_file() -> None:
    (page_size,) = [
        p for p in operation("get", "/v1/payments")["parameters"] if p["name"] == "pageSize"
    ]
    assert page_size["schema"]["minimum"] == 0
    month = SCHEMAS["pi.payments.v1.Card"]["properties"]["expMonth"]
    assert (month["minimum"], month["maximum"]) == (1, 12)


def test_every_operation_declares_its_errors_as_google_rpc_status() -> None:
    for item in DOCUMENT["paths"].values():
        for op in item.values():
            codes = set(op["responses"])
            assert {"200", "400", "401", "403", "404", "409", "429", "503"} <= codes
    status = DOCUMENT["components"]["responses"]["404"]["content"]["application/json"]
    assert status["schema"] == {"$ref": "#/components/schemas/google.rpc.Status"}


def test_idempotency_key_header_on_calls_that_take_a_request_id() -> None:
    names = [p["name"] for p in operation("post", "/v1/payments/{id}:refund")["parameters"]]
    assert "Idempotency-Key" in names
    assert "parameters" not in operation("get", "/v1/auth/jwks")


def test_created_resources_link_to_their_get_capture_and_refund() -> None:
    links = operation("post", "/v1/payments")["responses"]["200"]["links"]
    assert {"GetPayment", "CapturePayment", "RefundPayment", "CancelPayment"} <= set(links)
    assert links["CapturePayment"]["parameters"] == {"id": "$response.body#/payment/id"}
    txn = operation("post", "/v1/transactions")["responses"]["200"]["links"]
    assert {"GetTransaction", "CancelTransaction"} <= set(txn)


def test_unknown_body_fields_are_documented_as_accepted_since_envoy_ignores_them() -> None:
    assert "additionalProperties" not in SCHEMAS["pi.payments.v1.Payment"]
    assert SCHEMAS["pi.payments.v1.Payment"]["propertyNames"] == {"minLength": 1}


def test_a_constraint_naming_no_field_fails_the_generation() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(
        (REPO / "generated" / "descriptors.binpb").read_bytes()
    )
    services = ["pi.payments.v1.PaymentService"]
    with pytest.raises(ValueError, match=re.escape("pi.payments.v1.Payment.amout")):
        render(files, services, [], {"pi.payments.v1.Payment.amout": {"minimum": 1}}, {})


def test_text_patterns_follow_the_unicode_categories() -> None:
    trimmed = re.compile(text_pattern(["Cc", "Cf"], trimmed=True))
    assert trimmed.match("Acme Ltd") and trimmed.match("é")
    assert not trimmed.match(" Acme") and not trimmed.match("a\u200b") and not trimmed.match("")
    blank_ok = re.compile(text_pattern(["Cc"], allow="\n"))
    assert blank_ok.match("") and blank_ok.match("two\nlines") and not blank_ok.match("\x07")
