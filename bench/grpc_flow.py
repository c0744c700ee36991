"""A lean native-gRPC load generator for the payment flow (one process; run several).

    python -m bench.grpc_flow --transactions 127.0.0.1:31002 --payments 127.0.0.1:31003 \\
        --concurrency 32 --duration 20 --tokens-file tokens.txt --nonce n1 --out out.json

Why not h2load: h2load sends the same request body every time and cannot carry the id
returned by CreateTransaction into CreatePayment; pre-created transactions would not
help either, since its body (which names the transaction) cannot vary per request. So
this client chains the two calls itself, spending as little Python as possible per call:
grpc.aio on uvloop, requests serialised by hand from pre-built bytes (no message objects
on the request path), the response parsed once with the C protobuf runtime, no
interceptors. It still costs far more CPU than wrk, which is why the bench runs the same
client through Envoy too: direct vs. through-Envoy with one client is the edge's cost.

Each worker is a coroutine running create → pay → create → ... on a shared channel
(HTTP/2 multiplexes them). Output: JSON with per-call latencies (microseconds), status
counts and the number of succeeded flows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc

from generated.pi.payments.v1 import payments_pb2
from generated.pi.transactions.v1 import transactions_pb2

CREATE_TRANSACTION = "/pi.transactions.v1.TransactionService/CreateTransaction"
CREATE_PAYMENT = "/pi.payments.v1.PaymentService/CreatePayment"
SUCCEEDED = payments_pb2.PAYMENT_STATUS_SUCCEEDED


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def create_transaction_bytes(amount: int, currency: str) -> bytes:
    request = transactions_pb2.CreateTransactionRequest(
        transaction=transactions_pb2.Transaction(
            amount=amount, currency=currency, description="bench order"
        )
    )
    return request.SerializeToString()


class PaymentTemplate:
    """CreatePaymentRequest bytes for any transaction id, without building messages.

    Field order does not matter on the wire, so the payment is `transaction_id` (field 3)
    followed by the fixed rest (method, card, capture mode), wrapped in field 1.
    """

    def __init__(self, exp_year: int) -> None:
        rest = payments_pb2.Payment(
            method=payments_pb2.PAYMENT_METHOD_TYPE_CARD,
            card=payments_pb2.Card(
                number="4242424242424242", exp_month=12, exp_year=exp_year, cvc="123"
            ),
            capture_mode=payments_pb2.CAPTURE_MODE_AUTOMATIC,
        ).SerializeToString()
        self._rest = rest

    def build(self, transaction_id: str) -> bytes:
        tid = transaction_id.encode()
        payment = b"\x1a" + _varint(len(tid)) + tid + self._rest
        return b"\x0a" + _varint(len(payment)) + payment


def _channel(
    target: str, service: str, identity: str | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    """Plaintext (Envoy's h2c port), or straight to a service over mutual TLS as the mesh
    identity whose CA,CERT,KEY files `identity` names (the services accept nothing else)."""
    if not identity:
        return grpc.aio.insecure_channel(target, options=options)
    ca, cert, key = (Path(p).read_bytes() for p in identity.split(","))
    return grpc.aio.secure_channel(
        target,
        grpc.ssl_channel_credentials(ca, key, cert),
        options=[*options, ("grpc.ssl_target_name_override", service)],
    )


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.tokens_file) as f:
        tokens = [t for t in f.read().split() if t]
    options = [("grpc.enable_retries", 0)]
    txn_channel = _channel(args.transactions, "transactions", args.mesh_identity, options)
    pay_channel = (
        txn_channel
        if args.payments == args.transactions
        else _channel(args.payments, "payments", args.mesh_identity, options)
    )
    # No serializers: bytes in, bytes out.
    create_txn: Any = txn_channel.unary_unary(CREATE_TRANSACTION)
    create_pay: Any = pay_channel.unary_unary(CREATE_PAYMENT)
    ct_body = create_transaction_bytes(args.amount, args.currency)
    template = PaymentTemplate(args.exp_year)
    parse_txn = transactions_pb2.CreateTransactionResponse.FromString
    parse_pay = payments_pb2.CreatePaymentResponse.FromString

    lat_ct: list[int] = []
    lat_pay: list[int] = []
    codes: dict[str, dict[str, int]] = {"create_transaction": {}, "create_payment": {}}
    counters = {"flows": 0, "not_succeeded": 0}
    now = time.perf_counter_ns

    def bump(call: str, code: str) -> None:
        bucket = codes[call]
        bucket[code] = bucket.get(code, 0) + 1

    deadline_ns = now() + int(args.duration * 1e9)

    async def worker(index: int) -> None:
        auth = ("authorization", f"Bearer {tokens[(args.worker_offset + index) % len(tokens)]}")
        seq = 0
        while now() < deadline_ns:
            seq += 1
            md: tuple[tuple[str, str], ...] = (auth,)
            if args.idempotency:
                md = (auth, ("idempotency-key", f"g-{args.nonce}-{index}-{seq}-t"))
            t0 = now()
            try:
                raw = await create_txn(ct_body, metadata=md, timeout=args.timeout)
            except grpc.aio.AioRpcError as exc:
                lat_ct.append((now() - t0) // 1000)
                bump("create_transaction", exc.code().name)
                continue
            lat_ct.append((now() - t0) // 1000)
            bump("create_transaction", "OK")
            txn_id = parse_txn(raw).transaction.id
            if args.idempotency:
                md = (auth, ("idempotency-key", f"g-{args.nonce}-{index}-{seq}-p"))
            t0 = now()
            try:
                raw = await create_pay(template.build(txn_id), metadata=md, timeout=args.timeout)
            except grpc.aio.AioRpcError as exc:
                lat_pay.append((now() - t0) // 1000)
                bump("create_payment", exc.code().name)
                continue
            lat_pay.append((now() - t0) // 1000)
            bump("create_payment", "OK")
            if parse_pay(raw).payment.status == SUCCEEDED:
                counters["flows"] += 1
            else:
                counters["not_succeeded"] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    await txn_channel.close()
    if pay_channel is not txn_channel:
        await pay_channel.close()
    return {
        "elapsed_s": elapsed,
        "flows": counters["flows"],
        "not_succeeded": counters["not_succeeded"],
        "statuses": codes,
        "latencies_us": {"create_transaction": lat_ct, "create_payment": lat_pay},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_flow")
    parser.add_argument("--transactions", required=True, help="host:port of CreateTransaction")
    parser.add_argument("--payments", required=True, help="host:port of CreatePayment")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--tokens-file", required=True)
    parser.add_argument("--worker-offset", type=int, default=0)
    parser.add_argument("--nonce", required=True)
    parser.add_argument("--idempotency", action="store_true")
    parser.add_argument("--amount", type=int, default=1999)
    parser.add_argument("--currency", default="USD")
    parser.add_argument("--exp-year", type=int, default=2035)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mesh-identity", metavar="CA,CERT,KEY", help="mTLS to the services")
    args = parser.parse_args(argv)

    import uvloop

    result = uvloop.run(_run(args))
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
