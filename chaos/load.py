"""The load of a fault run, and what its clients were told.

Each client thread loops over one merchant's payment flow through Envoy (HTTP/JSON):
create a transaction, pay it by card (automatic or manual capture), then capture or
cancel a manual one and refund part of a captured one, now and then twice. Every
mutating call carries an `Idempotency-Key`; a call answered 429, 5xx, 409 (ABORTED) or not
at all is retried with the same key, as a careful merchant would (`retries` times,
spaced, or at once and in parallel in a retry storm).

The `Journal` keeps what matters for the checks: each payment's creation key, every
payment id an acknowledgement carried for it, the last state acknowledged, and which
operations ended without an answer (their outcome is unknown to the client: the
checker accepts either result for them, and only them).
"""

from __future__ import annotations

import http.client
import json
import random
import secrets
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

RETRYABLE = {409, 429, 500, 502, 503, 504}
CARD = {"number": "4242424242424242", "expMonth": 12, "cvc": "123"}


@dataclass
class PaymentRecord:
    key: str
    transaction_id: str
    amount: int
    manual: bool
    payment_ids: set[str] = field(default_factory=set)
    acked: dict[str, Any] | None = None  # the last payment view the client was given
    unknown: set[str] = field(default_factory=set)  # operations left without an answer
    refund_ids: dict[str, set[str]] = field(default_factory=dict)  # refund key -> ids seen


@dataclass
class Journal:
    """What the clients of one scenario sent and were told (thread-safe)."""

    requests: int = 0
    acknowledged: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    transactions: dict[str, int] = field(default_factory=dict)  # acked id -> amount
    payments: list[PaymentRecord] = field(default_factory=list)
    slowest: float = 0.0
    flow_times: list[float] = field(default_factory=list)  # when payments were acknowledged
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int | str, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            self.slowest = max(self.slowest, seconds)
            if status == 200:
                self.acknowledged += 1
            else:
                self.errors[str(status)] += 1

    def add(self, record: PaymentRecord) -> None:
        with self._lock:
            self.payments.append(record)


def transaction_body(amount: int, description: str) -> dict[str, Any]:
    """A CreateTransaction request of the load (USD)."""
    return {"amount": str(amount), "currency": "USD", "description": description}


def card_payment_body(transaction_id: str, exp_year: int, *, manual: bool) -> dict[str, Any]:
    """A CreatePayment request of the load: the approving test card."""
    return {
        "transactionId": transaction_id,
        "method": "PAYMENT_METHOD_TYPE_CARD",
        "card": {**CARD, "expYear": exp_year},
        "captureMode": "CAPTURE_MODE_MANUAL" if manual else "CAPTURE_MODE_AUTOMATIC",
    }


def _view(payment: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": payment.get("id", ""),
        "status": str(payment.get("status", "")).removeprefix("PAYMENT_STATUS_"),
        "captured": int(payment.get("capturedAmount", 0)),
        "refunded": int(payment.get("refundedAmount", 0)),
    }


class Client:
    """One keep-alive connection to Envoy, one merchant token."""

    def __init__(
        self, port: int, token: str, journal: Journal, *, timeout: float, storm: int = 0
    ) -> None:
        self.port = port
        self.token = token
        self.journal = journal
        self.timeout = timeout
        self.storm = storm  # > 0: every call is sent by this many extra senders at once
        self._conn: http.client.HTTPConnection | None = None
        self._storm_answers: list[tuple[int | str, dict[str, Any]]] = []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _once(self, path: str, body: dict[str, Any], key: str) -> tuple[int | str, dict[str, Any]]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        started = time.monotonic()
        status: int | str
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
            self._conn.request("POST", path, body=json.dumps(body), headers=headers)
            response = self._conn.getresponse()
            raw = response.read()
            status = response.status
            if response.getheader("connection", "").lower() == "close":
                self.close()
        except TimeoutError:
            self.close()
            status, raw = "timeout", b""
        except (OSError, http.client.HTTPException):
            self.close()
            status, raw = "connection", b""
        self.journal.count(status, time.monotonic() - started)
        try:
            data = json.loads(raw) if raw and status == 200 else {}
        except ValueError:
            data = {}
        return status, data

    def call(
        self, path: str, body: dict[str, Any], key: str, retries: int
    ) -> tuple[int | str, dict[str, Any]]:
        """POST until answered with a final status or out of retries; the last answer."""
        status: int | str = "connection"
        data: dict[str, Any] = {}
        for attempt in range(retries + 1):
            if self.storm:
                status, data = self._storm(path, body, key)
            else:
                status, data = self._once(path, body, key)
            if status not in RETRYABLE and status not in ("timeout", "connection"):
                break
            if not self.storm and attempt < retries:
                time.sleep(0.2 + 0.3 * attempt)
        return status, data

    def _storm(self, path: str, body: dict[str, Any], key: str) -> tuple[int | str, dict[str, Any]]:
        """The call, and `storm` duplicates with the same key on their own connections."""
        answers: list[tuple[int | str, dict[str, Any]]] = []

        def duplicate() -> None:
            twin = Client(self.port, self.token, self.journal, timeout=self.timeout)
            try:
                answers.append(twin._once(path, body, key))
            finally:
                twin.close()

        threads = [threading.Thread(target=duplicate) for _ in range(self.storm)]
        for thread in threads:
            thread.start()
        mine = self._once(path, body, key)
        for thread in threads:
            thread.join()
        self._storm_answers = answers
        return mine

    def flow(self, rng: random.Random, retries: int, exp_year: int) -> None:
        journal = self.journal
        amount = rng.randrange(500, 5000)
        nonce = secrets.token_hex(8)
        status, data = self.call(
            "/v1/transactions", transaction_body(amount, "chaos order"), f"chaos-t-{nonce}", retries
        )
        if status != 200:
            return
        transaction_id = data["transaction"]["id"]
        with journal._lock:
            journal.transactions[transaction_id] = amount
        manual = rng.random() < 0.4
        record = PaymentRecord(f"chaos-p-{nonce}", transaction_id, amount, manual)
        journal.add(record)
        body = card_payment_body(transaction_id, exp_year, manual=manual)
        if not self._step(record, "create", "/v1/payments", body, record.key, retries):
            return
        payment_id = next(iter(record.payment_ids))
        view = record.acked or {}
        if view.get("status") == "REQUIRES_CAPTURE":
            if rng.random() < 0.75:
                path, op = f"/v1/payments/{payment_id}:capture", "capture"
            else:
                path, op = f"/v1/payments/{payment_id}:cancel", "cancel"
            if not self._step(record, op, path, {}, f"chaos-{op}-{nonce}", retries):
                return
        for n in range(2):
            view = record.acked or {}
            left = view.get("captured", 0) - view.get("refunded", 0)
            if view.get("status") != "SUCCEEDED" or left <= 0 or rng.random() > 0.5 / (n + 1):
                break
            refund = {"amount": str(rng.randrange(1, left + 1)), "reason": "chaos refund"}
            key = f"chaos-refund{n}-{nonce}"
            path = f"/v1/payments/{payment_id}:refund"
            if not self._step(record, "refund", path, refund, key, retries):
                return

    def _step(
        self,
        record: PaymentRecord,
        op: str,
        path: str,
        body: dict[str, Any],
        key: str,
        retries: int,
    ) -> bool:
        """One operation of the flow; whether it was acknowledged."""
        self._storm_answers = []
        status, data = self.call(path, body, key, retries)
        answers = [(status, data), *self._storm_answers]
        acked = [d for s, d in answers if s == 200 and d.get("payment")]
        for d in acked:
            record.payment_ids.add(d["payment"]["id"])
            if "refund" in d:
                record.refund_ids.setdefault(key, set()).add(d["refund"]["id"])
        if status == 200 and data.get("payment"):
            record.acked = _view(data["payment"])
            if op == "create":
                self.journal.flow_times.append(time.monotonic())
            return True
        if acked:  # a duplicate was answered: the client knows the outcome
            record.acked = _view(acked[0]["payment"])
            return True
        if status in RETRYABLE or status in ("timeout", "connection"):
            record.unknown.add(op)  # it may have happened: the client cannot tell
        return False


def run_load(
    port: int,
    tokens: list[str],
    journal: Journal,
    *,
    clients: int,
    seconds: float,
    retries: int,
    timeout: float,
    exp_year: int,
    storm: int = 0,
) -> None:
    """`clients` threads doing flows for `seconds` (a flow in flight is finished)."""
    stop_at = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = random.Random()
        client = Client(port, tokens[index % len(tokens)], journal, timeout=timeout, storm=storm)
        try:
            while time.monotonic() < stop_at:
                try:
                    client.flow(rng, retries, exp_year)
                except (KeyError, ValueError, TypeError, StopIteration):
                    with journal._lock:
                        journal.errors["malformed answer"] += 1
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="chaos-client") as pool:
        for future in [pool.submit(worker, i) for i in range(clients)]:
            future.result()
