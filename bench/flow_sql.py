# ruff: noqa: E501  (the SQL of the flow reads best one statement per line)
"""The SQL of payment flows as pgbench runs it (`bench/pgbench.py` says what it models).

`script(1)` is one flow alone, unit by unit, as the services send it when flows do not
overlap. `script(n)` is n flows whose units commit together, as the services' group
commit sends them under load: each unit's statement once for all n flows, set-based
(`unnest` arrays, the forms of `pi/platform/db/merging.py` and of the outbox append),
in the same transactions. Values that differ per flow go in the arrays; constants are
written in the SQL (the services send those as arrays too: a few bytes more per row).
"""

from __future__ import annotations

# A time-ordered id body like pi.platform.kernel.ids (12 hex chars of milliseconds + 14 random).
_ID = (
    "lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')"
    " || substr(md5(random()::text), 1, 14)"
)
_HASH = "'" + "ab" * 32 + "'"  # a sha256 hex digest (the request fingerprint)
_CARD_FINGERPRINT = "'" + "cd" * 16 + "'"  # the card fingerprint (32 hex chars)
# Sizes as the services store them: a JSON Transaction (~355 bytes), "P" + the payment
# id while pending, "R" + a JSON Payment (~604 bytes) when final, a Movement (~147 bytes).
_TXN_RESPONSE = "convert_to(repeat('t', 355), 'UTF8')"
_PAY_ID = "'pay_' || substr(:txn{s}::text, 5)"
_PAY_PENDING = f"convert_to('P' || {_PAY_ID}, 'UTF8')"
_PAY_RESPONSE = "convert_to('R' || repeat('p', 603), 'UTF8')"
_MOVEMENT = "convert_to(repeat('m', 147), 'UTF8')"
_MERCHANT = "'mer_pgbench' || :m"
_KEY = "'pgb-' || :client_id || '-' || :k{s}"
_MOV_A = "'mov_' || substr(:txn{s}::text, 5) || 'a'"
_MOV_C = "'mov_' || substr(:txn{s}::text, 5) || 'c'"
_TXN_COLUMNS = (
    "id, merchant_id, amount, currency, description, metadata, status, authorized_amount,"
    " captured_amount, refunded_amount, cancelled, last_payment_failed, create_time, update_time"
)
_REF_COLUMNS = (
    "transaction_id, merchant_id, amount, currency, closed, held_amount, captured_amount,"
    " refunded_amount, movement_count, create_time, update_time"
)
_PAYMENT_COLUMNS = (
    "id, merchant_id, transaction_id, amount, currency, method, capture_mode, status,"
    " failure_reason, captured_amount, refunded_amount, card_brand, card_last4,"
    " card_fingerprint, card_exp_month, card_exp_year, bank_account_holder_name,"
    " bank_account_last4, wallet_type, processor_reference, create_time, update_time"
)
_KEY_COLUMNS = "scope, operation, key, request_hash, response, create_time"
_OUTBOX_COLUMNS = "id, transaction_id, seq, kind, payload, create_time, attempts, next_attempt_time"
_APPLIED_COLUMNS = (
    "id, transaction_id, payment_id, kind, authorized_delta, captured_delta, refunded_delta,"
    " occur_time, apply_time"
)

# BEGIN/COMMIT blocks (CreateTransaction, RegisterTransactions, T1, T2, ApplyMovements)
# + the dispatcher's autocommit mark; its two reads write nothing. Per script, whatever
# the flows in it: divided by them per flow.
COMMITS_PER_SCRIPT = 6

# --- one flow alone (`{s}` is "", or a flow's suffix) -------------------------------------

# 1. CreateTransaction: the key claimed already holding the response, then the
#    transaction (`txn` rides on the claim's RETURNING: the service makes the id up
#    front; pgbench needs a statement to get a time-ordered one).
_CREATE_TRANSACTION = f"""
INSERT INTO transactions.idempotency_keys ({_KEY_COLUMNS})
  VALUES ({_MERCHANT}, 'CreateTransaction', {_KEY}, {_HASH}, {_TXN_RESPONSE}, now())
  ON CONFLICT DO NOTHING RETURNING key AS key{{s}}, 'txn_' || {_ID} AS txn{{s}} \\gset
INSERT INTO transactions.transactions ({_TXN_COLUMNS})
  VALUES (:txn{{s}}, {_MERCHANT}, :amount, 'USD', 'bench order', '{{}}'::jsonb,
    'PENDING', 0, 0, 0, false, false, now(), now());
"""

# 3. CreatePayment's T1 (the ref is the one RegisterTransactions just inserted in this
#    process: not read), committed before the processor is called.
_T1 = f"""
INSERT INTO payments.idempotency_keys ({_KEY_COLUMNS})
  VALUES ({_MERCHANT}, 'CreatePayment', {_KEY}, {_HASH}, {_PAY_PENDING}, now())
  ON CONFLICT DO NOTHING RETURNING key;
UPDATE payments.transaction_refs SET closed = false, held_amount = held_amount + :amount,
    captured_amount = captured_amount + 0, refunded_amount = refunded_amount + 0,
    movement_count = movement_count + 0, update_time = now()
  WHERE transaction_id = :txn{{s}} AND held_amount = 0 AND captured_amount = 0 AND closed = false
  RETURNING movement_count;
INSERT INTO payments.payments ({_PAYMENT_COLUMNS})
  VALUES ({_PAY_ID}, {_MERCHANT}, :txn{{s}}, :amount, 'USD', 'CARD',
    'AUTOMATIC', 'PROCESSING', NULL, 0, 0, 'VISA', '4242', {_CARD_FINGERPRINT}, 12, 2035, NULL, NULL,
    NULL, NULL, now(), now());
"""

# 4. T2: settle the processor's answer. Conditional writes, no SELECT .. FOR UPDATE first:
#    the movements' append takes the ref's lock (both movements, numbered from the row's
#    count, in one statement), then the ref UPDATE sees the same row.
_T2 = f"""
UPDATE payments.idempotency_keys SET response = {_PAY_RESPONSE}
  WHERE scope = {_MERCHANT} AND operation = 'CreatePayment' AND key = {_KEY}
    AND response = {_PAY_PENDING};
INSERT INTO payments.outbox ({_OUTBOX_COLUMNS})
  SELECT m.id, t.transaction_id, t.movement_count + m.n, m.kind, {_MOVEMENT}, now(), 0, 'infinity'::timestamptz
  FROM payments.transaction_refs t
    JOIN unnest(ARRAY[{_MOV_A}, {_MOV_C}]::varchar[], ARRAY['AUTHORIZATION', 'CAPTURE']::varchar[])
      WITH ORDINALITY AS m(id, kind, n) ON true
  WHERE t.transaction_id = :txn{{s}} AND t.held_amount + :release >= 0
  FOR UPDATE OF t;
UPDATE payments.transaction_refs SET closed = false, held_amount = held_amount + :release,
    captured_amount = captured_amount + :amount, refunded_amount = refunded_amount + 0,
    movement_count = movement_count + 2, update_time = now()
  WHERE transaction_id = :txn{{s}} AND held_amount + :release >= 0
  RETURNING movement_count;
UPDATE payments.payments SET status = 'SUCCEEDED', failure_reason = NULL, captured_amount = :amount,
    refunded_amount = 0, processor_reference = 'sbx_' || substr(:txn{{s}}::text, 5), update_time = now()
  WHERE id = {_PAY_ID} AND status = 'PROCESSING' AND refunded_amount = 0
    AND processor_reference IS NOT DISTINCT FROM NULL;
"""

# 5. ApplyMovements' writes of the transaction: one per movement, in rounds (the n-th
#    write of every transaction in a round), pipelined.
_STEP = """
UPDATE transactions.transactions SET status = '{status}', authorized_amount = authorized_amount + {authorized},
    captured_amount = captured_amount + {captured}, refunded_amount = refunded_amount + 0,
    cancelled = false, last_payment_failed = false, update_time = now()
  WHERE id = :txn{{s}} AND merchant_id = {merchant};
"""

# --- n flows together: each statement once, set-based -------------------------------------

# The transaction ids, made up front as the services make theirs (one statement: the
# services make ids in Python; pgbench cannot read several rows into variables).
_IDS = "SELECT {columns} \\gset\n"

_CREATE_TRANSACTIONS = f"""
INSERT INTO transactions.idempotency_keys ({_KEY_COLUMNS})
  SELECT {_MERCHANT}, 'CreateTransaction', r.key, {_HASH}, {_TXN_RESPONSE}, now()
  FROM unnest({{keys}}) AS r(key)
  ON CONFLICT DO NOTHING RETURNING key;
INSERT INTO transactions.transactions ({_TXN_COLUMNS})
  SELECT r.id, {_MERCHANT}, :amount, 'USD', 'bench order', '{{{{}}}}'::jsonb,
    'PENDING', 0, 0, 0, false, false, now(), now()
  FROM unnest({{txns}}) AS r(id);
"""

_T1S = f"""
INSERT INTO payments.idempotency_keys ({_KEY_COLUMNS})
  SELECT {_MERCHANT}, 'CreatePayment', r.key, {_HASH}, r.pending, now()
  FROM unnest({{keys}}, {{pendings}}) AS r(key, pending)
  ON CONFLICT DO NOTHING RETURNING key;
UPDATE payments.transaction_refs SET closed = false, held_amount = held_amount + :amount,
    captured_amount = captured_amount + 0, refunded_amount = refunded_amount + 0,
    movement_count = movement_count + 0, update_time = now()
  FROM unnest({{txns}}) WITH ORDINALITY AS r(txn, n)
  WHERE transaction_id = r.txn AND held_amount = 0 AND captured_amount = 0 AND closed = false
  RETURNING movement_count, r.n;
INSERT INTO payments.payments ({_PAYMENT_COLUMNS})
  SELECT r.id, {_MERCHANT}, r.txn, :amount, 'USD', 'CARD',
    'AUTOMATIC', 'PROCESSING', NULL, 0, 0, 'VISA', '4242', {_CARD_FINGERPRINT}, 12, 2035, NULL, NULL,
    NULL, NULL, now(), now()
  FROM unnest({{pay_ids}}, {{txns}}) AS r(id, txn);
"""

_T2S = f"""
UPDATE payments.idempotency_keys SET response = {_PAY_RESPONSE}
  FROM unnest({{keys}}, {{pendings}}) WITH ORDINALITY AS r(key, pending, n)
  WHERE scope = {_MERCHANT} AND operation = 'CreatePayment' AND idempotency_keys.key = r.key
    AND response = r.pending
  RETURNING r.n;
INSERT INTO payments.outbox ({_OUTBOX_COLUMNS})
  SELECT m.id, t.transaction_id, t.movement_count + m.n, m.kind, {_MOVEMENT}, now(), 0, 'infinity'::timestamptz
  FROM payments.transaction_refs t
    JOIN unnest({{movement_txns}}, {{movement_numbers}}, {{movements}}, {{kinds}})
      AS m(txn, n, id, kind) ON true
  WHERE t.transaction_id = m.txn AND t.held_amount + :release >= 0
  FOR UPDATE OF t;
UPDATE payments.transaction_refs SET closed = false, held_amount = held_amount + :release,
    captured_amount = captured_amount + :amount, refunded_amount = refunded_amount + 0,
    movement_count = movement_count + 2, update_time = now()
  FROM unnest({{txns}}) WITH ORDINALITY AS r(txn, n)
  WHERE transaction_id = r.txn AND held_amount + :release >= 0
  RETURNING movement_count, r.n;
UPDATE payments.payments SET status = 'SUCCEEDED', failure_reason = NULL, captured_amount = :amount,
    refunded_amount = 0, processor_reference = 'sbx_' || substr(r.txn, 5), update_time = now()
  FROM unnest({{pay_ids}}, {{txns}}) WITH ORDINALITY AS r(id, txn, n)
  WHERE payments.id = r.id AND status = 'PROCESSING' AND refunded_amount = 0
    AND processor_reference IS NOT DISTINCT FROM NULL
  RETURNING r.n;
"""

_STEPS = """
UPDATE transactions.transactions SET status = '{status}', authorized_amount = authorized_amount + {authorized},
    captured_amount = captured_amount + {captured}, refunded_amount = refunded_amount + 0,
    cancelled = false, last_payment_failed = false, update_time = now()
  FROM unnest({txns}) WITH ORDINALITY AS r(txn, n)
  WHERE id = r.txn AND merchant_id = {merchant}
  RETURNING r.n;
"""

# The two steps of a captured card payment: authorization, then capture.
_STEP_VALUES = (
    {"status": "AUTHORIZED", "authorized": ":amount", "captured": "0"},
    {"status": "COMPLETED", "authorized": "0", "captured": ":amount"},
)


def _array(items: list[str], cast: str) -> str:
    return "ARRAY[" + ", ".join(items) + f"]::{cast}[]"


def script(flows: int) -> str:
    """The SQL of `flows` payment flows, each of their units in one transaction shared by
    all of them: what the services send when that many flows commit each unit together
    (group commit), and the batched calls (RegisterTransactions, the dispatcher's round)
    carry them all. One flow: its statements as a unit alone sends them."""
    if flows < 1:
        raise ValueError("a script holds at least one flow")
    sfx = [str(n) for n in range(1, flows + 1)] if flows > 1 else [""]

    def each(item: str) -> list[str]:
        return [item.replace("{s}", s) for s in sfx]

    txns = _array(each(":txn{s}"), "varchar")
    movements = [m for s in sfx for m in (_MOV_A.replace("{s}", s), _MOV_C.replace("{s}", s))]
    pay_ids = each(_PAY_ID)
    twice = lambda a, b: [x for _ in sfx for x in (a, b)]  # noqa: E731 (one line of SQL)
    movement_txns = [t for s in sfx for t in (f":txn{s}", f":txn{s}")]
    merchant = _MERCHANT
    if flows == 1:
        create = _CREATE_TRANSACTION.replace("{s}", "")
        t1 = _T1.replace("{s}", "")
        t2 = _T2.replace("{s}", "")
        steps = "".join(
            _STEP.format(merchant=merchant, **values).replace("{s}", "") for values in _STEP_VALUES
        )
    else:
        arrays = {
            "txns": txns,
            "keys": _array(each(_KEY), "varchar"),
            "pendings": _array(each(_PAY_PENDING), "bytea"),
            "pay_ids": _array(pay_ids, "varchar"),
            "movements": _array(movements, "varchar"),
            "movement_txns": _array(movement_txns, "varchar"),
            "movement_numbers": _array(twice("1", "2"), "bigint"),
            "kinds": _array(twice("'AUTHORIZATION'", "'CAPTURE'"), "varchar"),
        }
        columns = ", ".join(f"'txn_' || {_ID} AS txn{s}" for s in sfx)
        create = _IDS.format(columns=columns) + _CREATE_TRANSACTIONS.format(**arrays)
        t1 = _T1S.format(**arrays)
        t2 = _T2S.format(**arrays)
        steps = "".join(
            _STEPS.format(txns=txns, merchant=merchant, **values) for values in _STEP_VALUES
        )
    setup = "".join(f"\\set k{s} random(1, 9223372036854775806)\n" for s in sfx)
    return f"""
\\set amount 1999
\\set release -1 * :amount
\\set m random(1, 16)
{setup}
-- 1. CreateTransaction
BEGIN;
{create}
COMMIT;
-- 2. RegisterTransactions (the transaction service's FactsPublisher; one call carries
--    the facts of every transaction created meanwhile)
BEGIN;
INSERT INTO payments.transaction_refs ({_REF_COLUMNS})
  SELECT r.transaction_id, r.merchant_id, r.amount, r.currency, false, 0, 0, 0, 0, now(), now()
  FROM unnest({txns}, {_array([_MERCHANT] * flows, "varchar")}, {_array([":amount"] * flows, "bigint")}, {_array(["'USD'"] * flows, "varchar")})
    AS r(transaction_id, merchant_id, amount, currency)
  ON CONFLICT DO NOTHING RETURNING transaction_id;
COMMIT;
-- 3. CreatePayment's T1
BEGIN;
{t1}
COMMIT;
-- 4. ... T2
BEGIN;
{t2}
COMMIT;
-- 5. The outbox dispatcher's round: the due movements (autocommit) ...
SELECT outbox.id, outbox.transaction_id, outbox.seq, outbox.payload, outbox.attempts
  FROM payments.outbox
  WHERE outbox.delivered_time IS NULL AND outbox.next_attempt_time <= now()
    AND NOT (EXISTS (SELECT * FROM payments.outbox AS earlier
      WHERE earlier.transaction_id = outbox.transaction_id AND earlier.seq < outbox.seq
        AND earlier.delivered_time IS NULL AND earlier.next_attempt_time > outbox.next_attempt_time))
  ORDER BY outbox.next_attempt_time, outbox.transaction_id, outbox.seq LIMIT 500;
-- ... ApplyMovements (TransactionService.apply_movements): lock, record, the steps in rounds
BEGIN;
SELECT {_TXN_COLUMNS} FROM transactions.transactions
  WHERE id = ANY({txns}) ORDER BY id FOR UPDATE;
INSERT INTO transactions.applied_movements ({_APPLIED_COLUMNS})
  SELECT m.id, m.transaction_id, m.payment_id, m.kind, m.authorized_delta, m.captured_delta,
    m.refunded_delta, m.occur_time, now() AS apply_time
  FROM unnest({_array(movements, "varchar")}, {_array(movement_txns, "varchar")},
    {_array([p for p in pay_ids for _ in (1, 2)], "varchar")}, {_array(twice("'AUTHORIZATION'", "'CAPTURE'"), "varchar")},
    {_array(twice(":amount", "0"), "bigint")}, {_array(twice("0", ":amount"), "bigint")},
    {_array(twice("0", "0"), "bigint")}, {_array(twice("now()", "now()"), "timestamptz")})
    AS m(id, transaction_id, payment_id, kind, authorized_delta, captured_delta, refunded_delta, occur_time)
  ON CONFLICT (id) DO NOTHING RETURNING id;
\\startpipeline
{steps}
\\endpipeline
COMMIT;
-- ... mark them delivered (one statement, autocommit), then the idle wait's next due time
UPDATE payments.outbox SET delivered_time = now()
  WHERE id = ANY({_array(movements, "varchar")}) AND delivered_time IS NULL;
SELECT min(next_attempt_time) AS due FROM payments.outbox WHERE delivered_time IS NULL;
"""
