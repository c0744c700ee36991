"""Use cases of the payment service: create, capture, cancel, refund, read, close, settle.

Every money change follows one pattern: in ONE database transaction, lock the
transaction's ref row, apply a pure domain function (`pi.payments.domain`), write the
payment, the ref and the movements (outbox) and, if the caller sent a key, the response
for idempotent replays. After the commit the outbox dispatcher is nudged.

CreatePayment is split around the processor call so that a crash can never leave an
unrecorded charge (DESIGN.md, "never a double charge"):

1. validate (nothing written on bad input); read the ref without a transaction and,
   on first sight of the transaction, look it up at the transaction service (outside
   any database transaction: a replayed key always finds its ref, so never needs this).
   The transaction service usually pushes the ref ahead (`register_transactions`,
   right after CreateTransaction), so the lookup is only the fallback for a ref that
   has not arrived yet — and the push may land while it runs;
2. T1: claim the idempotency key already holding "pending <payment id>" (the id is made
   up front), check the budget and insert the payment as PROCESSING holding its amount.
   The ref is updated to hold it only if it is still what the check read; on first
   sight it is inserted holding nothing (unless it exists) and then updated only if it
   is still fresh, so a ref pushed meanwhile does as well as our own insert. If the
   update finds the row changed, the ref is locked and checked again;
3. `connector.authorize`, keyed by the payment id (a repeat never charges twice);
4. T2: replace "pending" under the key with the final response, apply the outcome to
   the ref, then to the payment only if it is still PROCESSING as T1 left it, and add
   the movements (AUTHORIZATION / CAPTURE / FAILURE). If the key or the payment moved
   on (a concurrent duplicate or the reconciler settled it), T2 rolls back and is done
   again the careful way: lock the key's row, the ref and the payment, re-read, decide.

Lock order everywhere: the idempotency key, the ref, then payments. A duplicate request
that finds "pending" resumes at step 3 with the same payment, so concurrent duplicates
and retries after a crash converge on one payment and one response. A payment left
PROCESSING (timeout, asynchronous method, crash) is settled by the reconciler through
`reconcile_payment`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pi.payments import domain
from pi.payments.connectors.base import (
    AuthorizeRequest,
    CaptureRequest,
    Connector,
    ConnectorResult,
    RefundRequest,
    VoidRequest,
)
from pi.payments.domain import (
    BankTransferDetails,
    BankTransferInput,
    CaptureMode,
    CardDetails,
    CardInput,
    FailureReason,
    Payment,
    PaymentChange,
    PaymentMethodType,
    PaymentRequest,
    PaymentStatus,
    ProcessorOutcome,
    ReconcileAction,
    Refund,
    TransactionRef,
    WalletInput,
)
from pi.payments.ledger_client import (
    REASON_TRANSACTION_NOT_FOUND,
    TransactionLedger,
)
from pi.payments.movements import cancellation_movement_id, movements_from_deltas
from pi.payments.snapshots import (
    decode_payment,
    decode_refund_result,
    encode_payment,
    encode_refund_result,
)
from pi.payments.store import PaymentBatch, PaymentStore, PaymentTx
from pi.platform.db.idempotency import Idempotency
from pi.platform.kernel.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    ValidationErrors,
)
from pi.platform.kernel.ids import new_id
from pi.platform.kernel.money import amount_problem, currency_problem
from pi.platform.kernel.pages import PageToken
from pi.platform.kernel.pages import page_size as parse_page_size
from pi.platform.kernel.principal import Principal, require_merchant, require_service
from pi.platform.kernel.text import text_problem

__all__ = [
    "OP_CANCEL",
    "OP_CAPTURE",
    "OP_CREATE",
    "OP_REFUND",
    "REASON_PAYMENT_NOT_FOUND",
    "REASON_PROCESSOR_DECLINED",
    "REASON_PROCESSOR_UNAVAILABLE",
    "REASON_TRANSACTION_MISMATCH",
    "CloseResult",
    "CreatePaymentInput",
    "PaymentPage",
    "PaymentService",
    "RefundResult",
    "RegisterResult",
    "TransactionFactsInput",
]

log = logging.getLogger(__name__)

OP_CREATE = "CreatePayment"
OP_CAPTURE = "CapturePayment"
OP_CANCEL = "CancelPayment"
OP_REFUND = "RefundPayment"

REASON_PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
REASON_PROCESSOR_DECLINED = "PROCESSOR_DECLINED"
REASON_PROCESSOR_UNAVAILABLE = "PROCESSOR_UNAVAILABLE"
REASON_TRANSACTION_MISMATCH = "TRANSACTION_MISMATCH"

MAX_ID_LENGTH = 64
MAX_REGISTERED_TRANSACTIONS = 1000
"""At most this many transactions per `register_transactions` call (payments.proto)."""

# Idempotency responses of CreatePayment: "pending" with the payment id after T1, the
# final payment snapshot after T2.
_PENDING = b"P"
_FINAL = b"R"


@dataclass(frozen=True, slots=True)
class CreatePaymentInput:
    """CreatePayment as plain values (unvalidated); None for an unspecified enum."""

    transaction_id: str
    amount: int
    method: PaymentMethodType | None
    capture_mode: CaptureMode | None = None
    card: CardInput | None = None
    bank_transfer: BankTransferInput | None = None
    wallet: WalletInput | None = None


@dataclass(frozen=True, slots=True)
class PaymentPage:
    payments: list[Payment]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund: Refund
    payment: Payment


@dataclass(frozen=True, slots=True)
class CloseResult:
    movement_id: str
    voided_payment_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TransactionFactsInput:
    """A transaction's facts as RegisterTransactions sends them (unvalidated)."""

    transaction_id: str
    merchant_id: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """How many refs were new, and which transactions were known with other facts."""

    registered_count: int
    conflicting_transaction_ids: tuple[str, ...]


class _Superseded(Exception):
    """Rolls back a settlement whose key or payment changed since T1, or a T1 whose
    idempotency key was taken."""


class _RefChanged(Exception):
    """Rolls back a T1 whose ref changed since it was read."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _payment_not_found() -> NotFound:
    return NotFound("The payment does not exist.", reason=REASON_PAYMENT_NOT_FOUND)


def _transaction_not_found() -> NotFound:
    return NotFound("The transaction does not exist.", reason=REASON_TRANSACTION_NOT_FOUND)


def _processor_refused(operation: str, result: ConnectorResult) -> FailedPrecondition | Unavailable:
    if result.outcome is ProcessorOutcome.DECLINED:
        return FailedPrecondition(
            f"The processor declined the {operation}.",
            reason=REASON_PROCESSOR_DECLINED,
            metadata={"failure_reason": (result.failure_reason or "PROCESSOR_DECLINED")},
        )
    return Unavailable(
        f"The processor did not confirm the {operation}; retry with the same idempotency key.",
        reason=REASON_PROCESSOR_UNAVAILABLE,
    )


def _id_problem(value: str) -> str | None:
    if not value:
        return "is required"
    if len(value) > MAX_ID_LENGTH or not all("!" <= c <= "~" for c in value):
        return f"must be an identifier of at most {MAX_ID_LENGTH} visible ASCII characters"
    return None


def _validate_facts(transactions: Sequence[TransactionFactsInput]) -> list[TransactionRef]:
    """RegisterTransactions' transactions as refs holding nothing; every invalid field
    reported at once (InvalidArgument)."""
    errors = ValidationErrors()
    if not transactions:
        errors.add("transactions", "is required")
    elif len(transactions) > MAX_REGISTERED_TRANSACTIONS:
        errors.add("transactions", f"must hold at most {MAX_REGISTERED_TRANSACTIONS} transactions")
    else:
        seen: set[str] = set()
        for index, facts in enumerate(transactions):
            field = f"transactions[{index}]"
            if (problem := _id_problem(facts.transaction_id)) is not None:
                errors.add(f"{field}.transaction_id", problem)
            elif facts.transaction_id in seen:
                errors.add(f"{field}.transaction_id", "appears more than once")
            seen.add(facts.transaction_id)
            if (problem := _id_problem(facts.merchant_id)) is not None:
                errors.add(f"{field}.merchant_id", problem)
            if (problem := amount_problem(facts.amount)) is not None:
                errors.add(f"{field}.amount", problem)
            if (problem := currency_problem(facts.currency)) is not None:
                errors.add(f"{field}.currency", problem)
    errors.raise_if_any("The request has invalid fields.")
    return [
        TransactionRef(
            transaction_id=facts.transaction_id,
            merchant_id=facts.merchant_id,
            amount=facts.amount,
            currency=facts.currency,
        )
        for facts in transactions
    ]


class PaymentService:
    """The payment use cases. Ports: store, processor connector, transaction ledger."""

    def __init__(
        self,
        store: PaymentStore,
        connector: Connector,
        ledger: TransactionLedger,
        *,
        idempotency: Idempotency,
        fingerprint_key: bytes,
        request_key: bytes,
        page_tokens: PageToken,
        notify: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`fingerprint_key` keys card fingerprints; `request_key` keys the request
        fingerprints stored with idempotency keys (they cover card numbers, so they must
        not be a plain hash). `notify` wakes the outbox dispatcher after a commit."""
        self._store = store
        self._connector = connector
        self._ledger = ledger
        self._idem = idempotency
        self._fingerprint_key = fingerprint_key
        self._request_key = request_key
        self._pages = page_tokens
        self._notify = notify
        self._clock = clock

    # -- CreatePayment --------------------------------------------------------------------

    async def create_payment(
        self, principal: Principal, data: CreatePaymentInput, *, idempotency_key: str | None
    ) -> Payment:
        merchant_id = require_merchant(principal)
        now = self._clock()
        request = self._validate_create(data, now)
        fingerprint = self._create_fingerprint(request, data)
        payment, ref, final = await self._record_processing(
            merchant_id, request, fingerprint, idempotency_key, now
        )
        if final:
            return payment

        result = await self._authorize(payment, request)
        key = (merchant_id, OP_CREATE, idempotency_key) if idempotency_key else None
        settled = await self._settle(payment, result, ref=ref, idempotency=key)
        log.debug(
            "payment created",
            extra={"payment_id": settled.id, "status": settled.status.value},
        )
        return settled

    async def _record_processing(
        self,
        merchant_id: str,
        request: PaymentRequest,
        fingerprint: str,
        idempotency_key: str | None,
        now: datetime,
    ) -> tuple[Payment, TransactionRef | None, bool]:
        """T1: the payment as PROCESSING with its hold, or what the key already holds.

        Returns (payment, the ref as T1 left it or None for a replay, whether the payment
        is a final replayed response).
        """
        known = await self._store.get_ref(request.transaction_id)
        if known is not None:
            seen = known
        else:
            seen = await self._look_up(
                merchant_id, request.transaction_id, fingerprint, idempotency_key
            )
        payment_id = new_id("pay")
        pending_response = _PENDING + payment_id.encode()
        # Fast path: the check runs on the ref as read; the write applies only if the row
        # is still exactly that (on first sight: as first inserted, by us or a push).
        change = (
            self._try_start(seen, request, payment_id, merchant_id, now)
            if seen.merchant_id == merchant_id
            else None
        )
        if change is not None:
            recorded = await self._record_at_once(
                merchant_id,
                idempotency_key,
                fingerprint,
                pending_response,
                seen,
                change,
                now,
                first_sight=known is None,
            )
            if recorded is True:
                return change.payment, change.ref, False
            if recorded is False:
                change = None  # the ref changed: straight to its lock below
        async with self._store.transaction() as tx:
            claim = await self._idem.claim(
                tx.conn,
                merchant_id,
                OP_CREATE,
                idempotency_key,
                fingerprint,
                response=pending_response,
            )
            if claim.replay is not None:
                if claim.replay.startswith(_FINAL):
                    return decode_payment(claim.replay[len(_FINAL) :]), None, True
                pending_id = claim.replay[len(_PENDING) :].decode()
                pending = await tx.get_payment(pending_id, merchant_id=merchant_id)
                if pending is None:  # pragma: no cover - written with the key
                    raise _payment_not_found()
                return pending, None, False
            if seen.merchant_id != merchant_id:  # never changes: no lock needed to say so
                raise _transaction_not_found()
            if change is not None:  # the fast path met a taken key that is free again
                if known is None:
                    written = await tx.hold_on_fresh_ref(seen, change.ref, now)
                else:
                    written = await tx.update_ref_if_unchanged(known, change.ref, now)
                if written:
                    await tx.insert_payment(change.payment)
                    return change.payment, change.ref, False
            elif known is None:
                await tx.insert_ref(seen, now)  # for the lock below; rolled back if refused
            # The ref changed since it was read (or the check refused it): decide again
            # under its lock, where the answer is final.
            ref = await tx.lock_ref(request.transaction_id)
            if ref is None or ref.merchant_id != merchant_id:  # pragma: no cover - inserted
                raise _transaction_not_found()
            change = domain.start_payment(
                ref,
                request,
                payment_id=payment_id,
                merchant_id=merchant_id,
                fingerprint_key=self._fingerprint_key,
                now=now,
            )
            await tx.insert_payment(change.payment)
            await tx.update_ref(ref, change.ref, [], now)
            return change.payment, change.ref, False

    async def _record_at_once(
        self,
        merchant_id: str,
        idempotency_key: str | None,
        fingerprint: str,
        pending: bytes,
        seen: TransactionRef,
        change: PaymentChange,
        now: datetime,
        *,
        first_sight: bool,
    ) -> bool | None:
        """T1's fast path in one round trip (and the COMMIT): claim the key, write the ref
        if it is still as read (on first sight: insert it holding nothing unless it
        exists, then write it if still so), insert the payment.

        True if all that committed. Otherwise it rolled back: None if the key was taken
        (the caller claims it again for the replay, or finds it free and goes on), False
        if the ref was not as read (the caller decides again under its lock).
        """
        batch = PaymentBatch()
        claim = self._idem.queue_claim(
            batch.batch, merchant_id, OP_CREATE, idempotency_key, fingerprint, response=pending
        )
        if first_sight:
            written = batch.hold_on_fresh_ref(seen, change.ref, now)
        else:
            written = batch.update_ref_if_unchanged(seen, change.ref, now)
        # Sent before the ref's write is known: if that misses, the payment goes with the
        # rollback (the ref's row exists either way, for the foreign key).
        batch.insert_payment(change.payment)
        try:
            async with self._store.transaction(batch):
                if not claim.claimed:
                    raise _Superseded
                if not written.value:
                    raise _RefChanged
        except _Superseded:
            return None
        except _RefChanged:
            return False
        return True

    def _try_start(
        self,
        ref: TransactionRef,
        request: PaymentRequest,
        payment_id: str,
        merchant_id: str,
        now: datetime,
    ) -> PaymentChange | None:
        """`domain.start_payment` on a ref read without a lock; None if it refuses (the
        refusal is only final under the lock: the ref may have changed since)."""
        try:
            return domain.start_payment(
                ref,
                request,
                payment_id=payment_id,
                merchant_id=merchant_id,
                fingerprint_key=self._fingerprint_key,
                now=now,
            )
        except FailedPrecondition:
            return None

    def _validate_create(self, data: CreatePaymentInput, now: datetime) -> PaymentRequest:
        extra: list[FieldViolation] = []
        if data.transaction_id and (problem := _id_problem(data.transaction_id)) is not None:
            extra.append(FieldViolation("payment.transaction_id", problem))
        try:
            request = domain.validate_payment_request(
                transaction_id=data.transaction_id,
                amount=data.amount,
                method=data.method,
                capture_mode=data.capture_mode,
                card=data.card,
                bank_transfer=data.bank_transfer,
                wallet=data.wallet,
                today=now.date(),
            )
        except InvalidArgument as error:
            raise InvalidArgument(error.message, [*extra, *error.violations]) from None
        if extra:
            raise InvalidArgument("The payment has invalid fields.", extra)
        return request

    def _create_fingerprint(self, request: PaymentRequest, data: CreatePaymentInput) -> str:
        details = request.details
        method_fields: dict[str, Any]
        if isinstance(details, CardDetails):
            method_fields = {
                "number": details.number,
                "exp_month": details.exp_month,
                "exp_year": details.exp_year,
                "cvc": details.cvc,
            }
        elif isinstance(details, BankTransferDetails):
            method_fields = {
                "holder": details.account_holder_name,
                "account": details.account_number,
            }
        else:
            method_fields = {"type": details.type.value, "token": details.token}
        return self._fingerprint(
            OP_CREATE,
            {
                "transaction_id": request.transaction_id,
                "amount": data.amount,
                "method": request.method.value,
                "capture_mode": request.capture_mode.value,
                "details": method_fields,
            },
        )

    async def _look_up(
        self, merchant_id: str, transaction_id: str, fingerprint: str, idempotency_key: str | None
    ) -> TransactionRef:
        """First sight of a transaction: its facts from the transaction service, as a ref
        holding nothing yet (NotFound unless it is the merchant's, Unavailable if the
        service cannot answer). T1 inserts it with the payment."""
        try:
            facts = await self._ledger.lookup_transaction(merchant_id, transaction_id)
        except Exception:
            # The key would have been claimed before the lookup's failure mattered: a key
            # used for another request is reported as such, whatever the lookup said.
            async with self._store.reading() as conn:
                await self._idem.reject_reuse(
                    conn, merchant_id, OP_CREATE, idempotency_key, fingerprint
                )
            raise
        return TransactionRef(
            transaction_id=facts.transaction_id,
            merchant_id=facts.merchant_id,
            amount=facts.amount,
            currency=facts.currency,
            closed=facts.cancelled,
        )

    async def _authorize(self, payment: Payment, request: PaymentRequest) -> ConnectorResult:
        try:
            return await self._connector.authorize(
                AuthorizeRequest(
                    payment_id=payment.id,
                    merchant_id=payment.merchant_id,
                    amount=payment.amount,
                    currency=payment.currency,
                    capture=payment.capture_mode is CaptureMode.AUTOMATIC,
                    details=request.details,
                )
            )
        except Exception:
            # Unknown outcome: the payment stays PROCESSING for the reconciler.
            log.exception("processor authorize failed", extra={"payment_id": payment.id})
            return ConnectorResult.timeout()

    async def _settle(
        self,
        payment: Payment,
        result: ConnectorResult,
        *,
        ref: TransactionRef | None = None,
        idempotency: tuple[str, str, str] | None = None,
    ) -> Payment:
        """Apply a processor outcome to a PROCESSING payment (T2, or the reconciler).

        A payment someone else settled first is returned as it is. With `idempotency`,
        the first request to get here stores the final response; the others replay it.
        With `ref` (the ref as T1 left it), the payment is settled without re-reading
        what T1 wrote, unless someone changed it since.
        """
        if ref is not None:
            settled = await self._settle_as_recorded(payment, ref, result, idempotency)
            if settled is not None:
                return settled
        wrote_movements = False
        async with self._store.transaction() as tx:
            if idempotency is not None:
                stored = await tx.lock_idempotency_response(*idempotency)
                if stored is not None and stored.startswith(_FINAL):
                    return decode_payment(stored[len(_FINAL) :])
            locked_ref = await tx.lock_ref(payment.transaction_id)
            current = await tx.get_payment(payment.id, lock=True)
            if locked_ref is None or current is None:  # pragma: no cover - never deleted
                raise _payment_not_found()
            if current.status is PaymentStatus.PROCESSING:
                now = self._clock()
                change = domain.authorize_outcome(
                    locked_ref,
                    current,
                    result.outcome,
                    failure_reason=result.failure_reason,
                    processor_reference=result.reference,
                    now=now,
                )
                wrote_movements = await self._persist(tx, current, locked_ref, change, now)
                current = change.payment
            if idempotency is not None:
                await tx.set_idempotency_response(*idempotency, _FINAL + encode_payment(current))
        if wrote_movements:
            self._notify()
        return current

    async def _settle_as_recorded(
        self,
        payment: Payment,
        ref: TransactionRef,
        result: ConnectorResult,
        idempotency: tuple[str, str, str] | None,
    ) -> Payment | None:
        """T2 on the payment and ref as T1 wrote them, each write conditional on nobody
        having settled first. None (nothing written) if someone did, or if the outcome
        changes nothing (unknown): the caller then re-reads under locks.

        The outcome only moves this payment's own hold, so `ref` being older than the row
        does not matter: the ref is written as deltas under its row lock, and the CHECK
        constraints have the last word. Lock order as everywhere: key, ref, payment.
        """
        now = self._clock()
        change = domain.authorize_outcome(
            ref,
            payment,
            result.outcome,
            failure_reason=result.failure_reason,
            processor_reference=result.reference,
            now=now,
        )
        settled = change.payment
        movements = movements_from_deltas(
            change.movements,
            merchant_id=payment.merchant_id,
            transaction_id=payment.transaction_id,
            now=now,
        )
        if settled == payment:
            # Nothing to write, so nothing would check that the payment is still
            # PROCESSING: the response must come from the row (the reconciler may have
            # settled it already). Rare (a timeout), so the locked path is no cost.
            return None
        # All in one round trip with the BEGIN, checked after: each write is conditional,
        # and one that missed rolls back the others.
        batch = PaymentBatch()
        key_finished = ref_written = None
        if idempotency is not None:
            key_finished = batch.replace_idempotency_response(
                *idempotency, _PENDING + payment.id.encode(), _FINAL + encode_payment(settled)
            )
        if change.ref != ref or movements:
            ref_written = batch.update_ref_if_holding(ref, change.ref, movements, now)
        payment_written = batch.update_payment_if_unchanged(payment, settled)
        try:
            async with self._store.transaction(batch):
                if key_finished is not None and not key_finished.value:
                    raise _Superseded  # a duplicate finished the key
                if ref_written is not None and not ref_written.value:
                    raise _Superseded  # our hold is gone: someone settled the payment
                if not payment_written.value:
                    raise _Superseded  # settled by a duplicate or the reconciler
        except _Superseded:
            return None
        if movements:
            self._notify()
        return settled

    async def _persist(
        self, tx: PaymentTx, old: Payment, ref: TransactionRef, change: PaymentChange, now: datetime
    ) -> bool:
        """Write a PaymentChange; returns whether movements went to the outbox."""
        if change.payment != old:
            await tx.update_payment(old, change.payment)
        movements = movements_from_deltas(
            change.movements,
            merchant_id=old.merchant_id,
            transaction_id=old.transaction_id,
            now=now,
        )
        if change.ref != ref or movements:
            await tx.update_ref(ref, change.ref, movements, now)
        if change.refund is not None:
            await tx.insert_refund(
                change.refund, merchant_id=old.merchant_id, transaction_id=old.transaction_id
            )
        return bool(movements)

    # -- reconciler -----------------------------------------------------------------------

    async def reconcile_payment(self, payment: Payment) -> Payment:
        """Ask the processor about a PROCESSING payment and settle it if the answer is final
        (the rule: `domain.reconcile_action`)."""
        if payment.status is not PaymentStatus.PROCESSING:
            return payment
        result = await self._connector.status(payment.id)
        action = domain.reconcile_action(payment, result.outcome, now=self._clock())
        if action is ReconcileAction.WAIT:
            return payment
        if action is ReconcileAction.VOID_AND_FAIL:
            void = await self._connector.void(
                VoidRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    idempotency_key=f"void_{payment.id}",
                )
            )
            if void.outcome is not ProcessorOutcome.APPROVED:
                return payment
            result = ConnectorResult.declined(FailureReason.PROCESSOR_UNAVAILABLE)
        return await self._settle(payment, result)

    # -- reads ----------------------------------------------------------------------------

    async def get_payment(self, principal: Principal, payment_id: str) -> Payment:
        merchant_id = require_merchant(principal)
        if not payment_id:
            raise InvalidArgument.field("id", "is required")
        payment = await self._store.get_payment(merchant_id, payment_id)
        if payment is None:
            raise _payment_not_found()
        return payment

    async def list_payments(
        self,
        principal: Principal,
        *,
        transaction_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> PaymentPage:
        merchant_id = require_merchant(principal)
        size = parse_page_size(page_size)
        filters = {"merchant_id": merchant_id, "transaction_id": transaction_id}
        after: tuple[datetime, str] | None = None
        if page_token:
            position = self._pages.decode(page_token, filters)
            try:
                after = (datetime.fromisoformat(position["t"]), str(position["id"]))
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument.field("page_token", "is not a valid page token.") from None
        rows = await self._store.list_payments(
            merchant_id, transaction_id=transaction_id or None, after=after, limit=size + 1
        )
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_token = self._pages.encode(
                {"t": last.create_time.isoformat(), "id": last.id}, filters
            )
        return PaymentPage(payments=rows, next_page_token=next_token)

    # -- Capture / Cancel / Refund --------------------------------------------------------

    async def capture_payment(
        self,
        principal: Principal,
        payment_id: str,
        *,
        amount: int = 0,
        idempotency_key: str | None = None,
    ) -> Payment:
        merchant_id = require_merchant(principal)
        errors = ValidationErrors()
        if not payment_id:
            errors.add("id", "is required")
        if amount and (problem := amount_problem(amount)) is not None:
            errors.add("amount", problem)
        errors.raise_if_any("The capture has invalid fields.")
        fingerprint = self._fingerprint(OP_CAPTURE, {"id": payment_id, "amount": amount})
        async with self._store.transaction() as tx:
            claim = await self._idem.claim(
                tx.conn, merchant_id, OP_CAPTURE, idempotency_key, fingerprint
            )
            if claim.replay is not None:
                return decode_payment(claim.replay)
            payment, ref = await self._lock_payment(tx, merchant_id, payment_id)
            now = self._clock()
            change = domain.capture(ref, payment, amount or None, now=now)
            result = await self._connector.capture(
                CaptureRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    amount=change.payment.captured_amount,
                    currency=payment.currency,
                    idempotency_key=f"capture_{payment.id}",
                )
            )
            if result.outcome is not ProcessorOutcome.APPROVED:
                raise _processor_refused("capture", result)
            await self._persist(tx, payment, ref, change, now)
            await self._idem.complete(tx.conn, claim, encode_payment(change.payment))
        self._notify()
        return change.payment

    async def cancel_payment(
        self, principal: Principal, payment_id: str, *, idempotency_key: str | None = None
    ) -> Payment:
        merchant_id = require_merchant(principal)
        if not payment_id:
            raise InvalidArgument.field("id", "is required")
        fingerprint = self._fingerprint(OP_CANCEL, {"id": payment_id})
        async with self._store.transaction() as tx:
            claim = await self._idem.claim(
                tx.conn, merchant_id, OP_CANCEL, idempotency_key, fingerprint
            )
            if claim.replay is not None:
                return decode_payment(claim.replay)
            payment, ref = await self._lock_payment(tx, merchant_id, payment_id)
            now = self._clock()
            change = domain.cancel(ref, payment, now=now)
            result = await self._connector.void(
                VoidRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    idempotency_key=f"void_{payment.id}",
                )
            )
            if result.outcome is not ProcessorOutcome.APPROVED:
                raise _processor_refused("void", result)
            await self._persist(tx, payment, ref, change, now)
            await self._idem.complete(tx.conn, claim, encode_payment(change.payment))
        self._notify()
        return change.payment

    async def refund_payment(
        self,
        principal: Principal,
        payment_id: str,
        *,
        amount: int = 0,
        reason: str = "",
        idempotency_key: str | None = None,
    ) -> RefundResult:
        merchant_id = require_merchant(principal)
        errors = ValidationErrors()
        if not payment_id:
            errors.add("id", "is required")
        if amount and (problem := amount_problem(amount)) is not None:
            errors.add("amount", problem)
        if (
            problem := text_problem(
                reason, max_length=domain.MAX_REFUND_REASON_LENGTH, multiline=True
            )
        ) is not None:
            errors.add("reason", problem)
        errors.raise_if_any("The refund has invalid fields.")
        fingerprint = self._fingerprint(
            OP_REFUND, {"id": payment_id, "amount": amount, "reason": reason}
        )
        async with self._store.transaction() as tx:
            claim = await self._idem.claim(
                tx.conn, merchant_id, OP_REFUND, idempotency_key, fingerprint
            )
            if claim.replay is not None:
                refund, replayed = decode_refund_result(claim.replay)
                return RefundResult(refund=refund, payment=replayed)
            payment, ref = await self._lock_payment(tx, merchant_id, payment_id)
            now = self._clock()
            refund_id = new_id("ref")
            change = domain.refund(
                ref, payment, amount or None, refund_id=refund_id, reason=reason, now=now
            )
            if change.refund is None:  # pragma: no cover - refund() always sets it
                raise AssertionError("domain.refund returned no refund")
            # A retried request (same key) reuses the processor key even if the first
            # attempt's database transaction was lost, so the processor refunds once.
            processor_key = (
                "refund_"
                + self._fingerprint("refund-key", {"m": merchant_id, "k": idempotency_key})
                if idempotency_key
                else refund_id
            )
            result = await self._connector.refund(
                RefundRequest(
                    payment_id=payment.id,
                    reference=payment.processor_reference,
                    amount=change.refund.amount,
                    currency=payment.currency,
                    idempotency_key=processor_key,
                )
            )
            if result.outcome is not ProcessorOutcome.APPROVED:
                raise _processor_refused("refund", result)
            await self._persist(tx, payment, ref, change, now)
            await self._idem.complete(
                tx.conn, claim, encode_refund_result(change.refund, change.payment)
            )
        self._notify()
        return RefundResult(refund=change.refund, payment=change.payment)

    async def _lock_payment(
        self, tx: PaymentTx, merchant_id: str, payment_id: str
    ) -> tuple[Payment, TransactionRef]:
        """The merchant's payment and its ref, both locked (ref first: the lock order)."""
        found = await tx.get_payment(payment_id, merchant_id=merchant_id)
        if found is None:
            raise _payment_not_found()
        ref = await tx.lock_ref(found.transaction_id)
        payment = await tx.get_payment(payment_id, lock=True)
        if ref is None or payment is None:  # pragma: no cover - rows are never deleted
            raise _payment_not_found()
        return payment, ref

    # -- PaymentLedgerService.CloseTransaction --------------------------------------------

    async def close_transaction(
        self,
        principal: Principal,
        *,
        merchant_id: str,
        transaction_id: str,
        amount: int,
        currency: str,
    ) -> CloseResult:
        """Close a transaction to new payments and void its authorizations (the money
        flow agreement). Idempotent: closing again changes nothing."""
        require_service(principal)
        errors = ValidationErrors()
        for field, value in (("merchant_id", merchant_id), ("transaction_id", transaction_id)):
            if (problem := _id_problem(value)) is not None:
                errors.add(field, problem)
        if (problem := amount_problem(amount)) is not None:
            errors.add("amount", problem)
        if (problem := currency_problem(currency)) is not None:
            errors.add("currency", problem)
        errors.raise_if_any("The request has invalid fields.")
        movement_id = cancellation_movement_id(transaction_id)
        now = self._clock()
        async with self._store.transaction() as tx:
            ref = await tx.lock_ref(transaction_id)
            if ref is None:
                await tx.insert_ref(
                    TransactionRef(
                        transaction_id=transaction_id,
                        merchant_id=merchant_id,
                        amount=amount,
                        currency=currency,
                    ),
                    now,
                )
                ref = await tx.lock_ref(transaction_id)
            if ref is None or ref.merchant_id != merchant_id:
                raise _transaction_not_found()
            if ref.amount != amount or ref.currency != currency:
                raise FailedPrecondition(
                    "The transaction's amount or currency differs from what the payment "
                    "service knows.",
                    reason=REASON_TRANSACTION_MISMATCH,
                )
            existing = await tx.payments_of_transaction(transaction_id)
            change = domain.close_transaction(ref, existing, now=now)
            if change.already_closed:
                return CloseResult(movement_id=movement_id, voided_payment_ids=())
            for voided in change.voided:
                result = await self._connector.void(
                    VoidRequest(
                        payment_id=voided.id,
                        reference=voided.processor_reference,
                        idempotency_key=f"void_{voided.id}",
                    )
                )
                if result.outcome is not ProcessorOutcome.APPROVED:
                    raise _processor_refused("void", result)
            originals = {p.id: p for p in existing}
            for voided in change.voided:
                await tx.update_payment(originals[voided.id], voided)
            movements = movements_from_deltas(
                change.movements, merchant_id=merchant_id, transaction_id=transaction_id, now=now
            )
            await tx.update_ref(ref, change.ref, movements, now)
        self._notify()
        log.info(
            "transaction closed",
            extra={"transaction_id": transaction_id, "voided": len(change.voided)},
        )
        return CloseResult(
            movement_id=movement_id, voided_payment_ids=tuple(v.id for v in change.voided)
        )

    # -- PaymentLedgerService.RegisterTransactions ----------------------------------------

    async def register_transactions(
        self, principal: Principal, transactions: Sequence[TransactionFactsInput]
    ) -> RegisterResult:
        """Learn transactions ahead of their first payment, as refs holding nothing, so
        that CreatePayment finds them without a lookup. Idempotent: a transaction that
        has a ref already keeps it untouched (its facts never change); one whose ref says
        otherwise is reported and logged, never overwritten."""
        require_service(principal)
        refs = _validate_facts(transactions)
        now = self._clock()
        async with self._store.transaction() as tx:
            inserted = await tx.insert_refs(refs, now)
            known = await tx.get_refs(
                [ref.transaction_id for ref in refs if ref.transaction_id not in inserted]
            )
        conflicting = tuple(
            ref.transaction_id
            for ref in refs
            if (old := known.get(ref.transaction_id)) is not None
            and (old.merchant_id, old.amount, old.currency)
            != (ref.merchant_id, ref.amount, ref.currency)
        )
        if conflicting:
            log.warning(
                "registered transactions differ from their refs; the refs are kept",
                extra={"count": len(conflicting), "transaction_ids": list(conflicting[:10])},
            )
        return RegisterResult(
            registered_count=len(inserted), conflicting_transaction_ids=conflicting
        )

    # -- helpers --------------------------------------------------------------------------

    def _fingerprint(self, operation: str, fields: dict[str, Any]) -> str:
        """Keyed hash of a request, stored with its idempotency key (64 hex chars)."""
        body = json.dumps(
            {"op": operation, "fields": fields},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hmac.new(self._request_key, body.encode(), hashlib.sha256).hexdigest()
