"""Schemathesis hooks for fuzzing the HTTP API (`make fuzz`, tests/e2e/test_contract_fuzzed.py).

Loaded by the schemathesis CLI through SCHEMATHESIS_HOOKS. Two things live here:

- authentication: a merchant's bearer token, issued from the API key in
  PI_FUZZ_API_KEY_ID / PI_FUZZ_API_KEY_SECRET at PI_FUZZ_BASE_URL and renewed before it
  expires (tokens live 15 minutes; a full run lasts longer);
- the rules of the contract that JSON Schema cannot state, and that the document names
  in its descriptions: a card number ends with its Luhn digit
  and its CVC has its brand's length, a card expires within 50 years
  from now, an IBAN-shaped account number has a valid checksum, a list's time range runs forwards, a
  page token is one the server issued, and `requestId` equals the `Idempotency-Key`
  header when both are sent. Only schema-valid (positive) cases are adjusted, and only
  within what the schema allows, so a valid case stays valid and an
  invalid one is sent as generated.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.request
from typing import Any

import schemathesis

_TOKEN_LIFETIME = 600.0  # renew well before the 900 s expiry


@schemathesis.auth()
class MerchantToken:
    """`Authorization: Bearer ...` for a merchant, from POST /v1/auth/token."""

    def __init__(self) -> None:
        self._token = ""
        self._issued = 0.0

    def get(self, case: Any, context: Any) -> str:
        if not self._token or time.monotonic() - self._issued > _TOKEN_LIFETIME:
            body = json.dumps(
                {
                    "apiKeyId": os.environ["PI_FUZZ_API_KEY_ID"],
                    "apiKeySecret": os.environ["PI_FUZZ_API_KEY_SECRET"],
                }
            ).encode()
            request = urllib.request.Request(
                os.environ["PI_FUZZ_BASE_URL"] + "/v1/auth/token",
                data=body,
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as reply:
                issued = json.load(reply)
            self._token = issued["accessToken"]
            _OWN["tokenId"] = issued["tokenId"]
            self._issued = time.monotonic()
        return self._token

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


_OWN: dict[str, str] = {}


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    """The fuzzer's own credentials are off limits: revoking them ends the run, not a bug.

    Schemathesis reuses identifiers it saw in responses (ListApiKeys shows the key the
    run authenticates with), so it would otherwise revoke its own key or token.
    """
    own_key = os.environ.get("PI_FUZZ_API_KEY_ID")
    if (case.path_parameters or {}).get("id") == own_key:
        return False
    body = case.body if isinstance(case.body, dict) else {}
    if any(_nested_nulls(value) for value in body.values()):
        return False
    return not (_OWN.get("tokenId") and body.get("tokenId") == _OWN["tokenId"])


def _nested_nulls(value: Any) -> bool:
    """A list holding lists of nulls (`"scopes": [[null, null]]`): Envoy's transcoder
    drops null elements of a repeated field, so the service receives an empty list, a
    valid request. A known leniency of the edge (README, "The contract, fuzzed"), not a
    contract the services could refuse: they never see it."""
    return isinstance(value, list) and any(
        isinstance(item, list) and all(inner is None for inner in item) for item in value
    )


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """Adjusts a schema-valid case just before it is sent (schemathesis then re-checks it)."""
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return
    # A page token is the server's own opaque, signed cursor: only one it issued (the
    # nextPage link of the stateful phase) is valid, with the list parameters it was
    # issued for.
    if isinstance(case.query, dict) and "pageToken" in case.query:
        token = case.query["pageToken"]
        if token in _ISSUED_PAGE_TOKENS:
            case.query.clear()
            case.query.update({**_ISSUED_PAGE_TOKENS[token], "pageToken": token})
        else:
            del case.query["pageToken"]
    if isinstance(case.query, dict):
        start, end = case.query.get("createTimeStart"), case.query.get("createTimeEnd")
        if isinstance(start, str) and isinstance(end, str) and _instant(end) < _instant(start):
            case.query["createTimeStart"], case.query["createTimeEnd"] = end, start
    if isinstance(case.body, dict):
        _card(case.body.get("card"))
        _bank_transfer(case.body.get("bankTransfer"))
    # `requestId` and the header must agree; an empty header is a key too.
    headers = case.headers or {}
    key = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), None)
    for fields in (case.body, case.query):
        if key is None or not isinstance(fields, dict):
            continue
        if fields.get("requestId") not in (None, "", key):
            fields["requestId"] = key


# Page tokens the server issued -> the list parameters of the request they came from.
_ISSUED_PAGE_TOKENS: dict[str, dict[str, Any]] = {}


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if response.status_code == 200 and b"nextPageToken" in response.content:
        token = json.loads(response.content).get("nextPageToken")
        if token:
            query = dict(case.query or {})
            query.pop("pageToken", None)
            _ISSUED_PAGE_TOKENS[token] = query


def _instant(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _card(card: Any) -> None:
    if not isinstance(card, dict):
        return
    number = card.get("number")
    digits = "".join(c for c in number if c.isdigit()) if isinstance(number, str) else ""
    if isinstance(number, str) and 12 <= len(digits) <= 19:
        last = max(i for i, c in enumerate(number) if c.isdigit())
        card["number"] = number[:last] + luhn_digit(digits[:-1]) + number[last + 1 :]
        # 4 digits for Amex (34, 37), 3 for the others.
        cvc, length = card.get("cvc"), 4 if digits[:2] in ("34", "37") else 3
        if isinstance(cvc, str) and cvc.isdigit():
            card["cvc"] = (cvc + "000")[:length]
    year = card.get("expYear")
    # JSON integers may arrive as 2027.0, which the schema's `integer` allows.
    number = isinstance(year, int | float) and not isinstance(year, bool)
    whole = number and float(year).is_integer()
    if whole and 1000 <= year <= 9999:
        this_year = dt.date.today().year
        card["expYear"] = min(max(year, this_year + 1), this_year + 50)


def luhn_digit(payload: str) -> str:
    """The check digit that makes `payload + digit` pass the Luhn check."""
    total = 0
    for index, char in enumerate(reversed(payload)):
        digit = int(char)
        if index % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str((10 - total % 10) % 10)


def _bank_transfer(bank: Any) -> None:
    if not isinstance(bank, dict) or not isinstance(bank.get("accountNumber"), str):
        return
    # Digits only never has an IBAN's shape (two letters first), so no checksum applies.
    account = bank["accountNumber"]
    bank["accountNumber"] = "".join(c if c.isdigit() or c == " " else "7" for c in account)
