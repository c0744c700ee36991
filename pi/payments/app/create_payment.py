"""CreatePayment, split around the processor call so that a crash can never leave an
unrecorded charge, and never a double charge:

1. validate (nothing written on bad input); read the ref and, on first sight of the
   transaction, look it up at the transaction service (outside any unit: a replayed
   key always finds its ref, so never needs this). The transaction service usually
   pushes the ref ahead (`register_transactions`, right after CreateTransaction), so
   the lookup is only the fallback for a ref that has not arrived yet, and the push may
   land while it runs. A ref this process registered is not even read: it is taken
   as registered from `RecentRefs` (recent_refs.py says why that is safe);
2. T1: claim the idempotency key already holding "pending <payment id>" (the id is made
   up front), check the budget and record the payment as PROCESSING holding its amount.
   Optimistically first, on the ref as read (on first sight: as looked up, inserted
   holding nothing unless a push got there first); if the ref changed meanwhile, or the
   check refuses, decided again on the locked ref;
3. `connector.authorize`, keyed by the payment id (a repeat never charges twice);
4. T2 (`settle.py`): the final response replaces "pending" under the key, and the
   processor's answer is applied to the ref and the payment with its movements
   (AUTHORIZATION / CAPTURE / FAILURE).

A duplicate request that finds "pending" resumes at step 3 with the same payment, so
concurrent duplicates and retries after a crash converge on one payment and one
response. A payment left PROCESSING (timeout, asynchronous method, crash) is settled by
the reconciler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from pi.payments.app.common import (
    RequestFingerprints,
    id_problem,
    payment_not_found,
    transaction_not_found,
)
from pi.payments.app.ports import Clock, Connector, PaymentsUnit, TransactionLedger, UnitsOfWork
from pi.payments.app.recent_refs import RecentRefs
from pi.payments.app.requests import FinalPayment, PendingPayment, RequestKey
from pi.payments.app.settle import Settlement, SettlePayment
from pi.payments.domain import (
    AuthorizeRequest,
    BankTransferDetails,
    BankTransferInput,
    CaptureMode,
    CardDetails,
    CardInput,
    ConnectorResult,
    Payment,
    PaymentMethodType,
    PaymentRequest,
    PaymentStatus,
    TransactionRef,
    WalletInput,
    start_payment,
    validate_payment_request,
)
from pi.payments.domain.cards import card_fingerprint
from pi.platform.kernel.errors import FailedPrecondition, FieldViolation, InvalidArgument
from pi.platform.kernel.ids import new_id
from pi.platform.kernel.principal import Principal, require_merchant
from pi.platform.kernel.units import Mode, optimistically

__all__ = ["OP_CREATE", "CreatePayment", "CreatePaymentInput"]

log = logging.getLogger(__name__)

OP_CREATE = "CreatePayment"


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
class _Recorded:
    """What T1 left: the payment, and the ref holding it (None for a replay)."""

    payment: Payment
    ref: TransactionRef | None
    final: bool = False


class CreatePayment:
    def __init__(
        self,
        units: UnitsOfWork,
        connector: Connector,
        ledger: TransactionLedger,
        settle: SettlePayment,
        *,
        fingerprints: RequestFingerprints,
        card_key: bytes,
        clock: Clock,
        recent: RecentRefs | None = None,
    ) -> None:
        """`card_key` keys card fingerprints; `fingerprints` the requests' (stored with
        their idempotency keys); `recent` the refs RegisterTransactions just inserted."""
        self._units = units
        self._connector = connector
        self._ledger = ledger
        self._settle = settle
        self._fingerprints = fingerprints
        self._card_key = card_key
        self._clock = clock
        self._recent = RecentRefs() if recent is None else recent

    async def __call__(
        self, principal: Principal, data: CreatePaymentInput, *, idempotency_key: str | None
    ) -> Payment:
        merchant_id = require_merchant(principal)
        now = self._clock()
        request = _validate(data, now)
        fingerprint = self._fingerprint(merchant_id, request, data)
        key = RequestKey(merchant_id, OP_CREATE, idempotency_key, fingerprint)
        known = self._recent.take(request.transaction_id)
        if known is None:
            async with self._units(Mode.READ) as unit:
                known = await unit.refs.get(request.transaction_id)
        facts = known if known is not None else await self._look_up(key, request.transaction_id)
        record = partial(self._record, key, request, known, facts, new_id("pay"), now)
        recorded = await optimistically(self._units, record)
        if recorded.final:
            return recorded.payment

        result = await self._authorize(recorded.payment, request)
        settled = await self._settle(
            Settlement(recorded.payment, result, ref=recorded.ref, request=key)
        )
        log.debug(
            "payment created", extra={"payment_id": settled.id, "status": settled.status.value}
        )
        return settled

    async def _record(
        self,
        key: RequestKey,
        request: PaymentRequest,
        known: TransactionRef | None,
        facts: TransactionRef,
        payment_id: str,
        now: datetime,
        unit: PaymentsUnit,
    ) -> _Recorded:
        """T1: the payment as PROCESSING with its hold, or what the key already holds."""
        merchant_id = key.scope
        async with unit:
            replay = await unit.idempotency.claim_create(key, PendingPayment(payment_id))
            if isinstance(replay, FinalPayment):
                return _Recorded(replay.payment, None, final=True)
            if isinstance(replay, PendingPayment):
                pending = await unit.payments.find(replay.payment_id, merchant_id)
                if pending is None:  # pragma: no cover - written with the key
                    raise payment_not_found()
                # Settled meanwhile (the reconciler FAILED it as never received, or
                # settled the processor's answer): that is the answer. Authorizing again
                # would charge a card for a payment this service already decided on.
                settled = pending.status is not PaymentStatus.PROCESSING
                return _Recorded(pending, None, final=settled)
            if known is not None:
                ref: TransactionRef | None = await unit.refs.get(request.transaction_id, seen=known)
            else:
                ref = await unit.refs.add(facts, now=now)
            if ref is None or ref.merchant_id != merchant_id:
                # A refusal writes nothing, so it is final only once the key is really
                # claimed: a reused key is reported as such first.
                unit.confirm_reads()
                raise transaction_not_found()
            try:
                change = start_payment(
                    ref,
                    request,
                    payment_id=payment_id,
                    merchant_id=merchant_id,
                    fingerprint_key=self._card_key,
                    now=now,
                )
            except FailedPrecondition:
                unit.confirm_reads()  # the ref read may be stale: refused for good under its lock
                raise
            await unit.refs.update(ref, change.ref, now=now)
            await unit.payments.add(change.payment)
            await unit.commit()
        return _Recorded(change.payment, change.ref)

    async def _look_up(self, key: RequestKey, transaction_id: str) -> TransactionRef:
        """First sight of a transaction: its facts from the transaction service, as a ref
        holding nothing yet (NotFound unless it is the merchant's, Unavailable if the
        service cannot answer). T1 inserts it with the payment."""
        try:
            facts = await self._ledger.lookup_transaction(key.scope, transaction_id)
        except Exception:
            # The key would have been claimed before the lookup's failure mattered: a key
            # used for another request is reported as such, whatever the lookup said.
            async with self._units(Mode.READ) as unit:
                await unit.idempotency.reject_reuse(key)
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

    def _fingerprint(
        self, merchant_id: str, request: PaymentRequest, data: CreatePaymentInput
    ) -> str:
        """The request's fingerprint, kept with its idempotency key for 24 hours: of a card
        only what the payment keeps anyway (its fingerprint and expiry), never anything
        derived from the CVC (PCI DSS 3.3.1.2) or a hash of the bare number."""
        details = request.details
        method_fields: dict[str, Any]
        if isinstance(details, CardDetails):
            method_fields = {
                "card": card_fingerprint(details.number, self._card_key, merchant_id),
                "exp_month": details.exp_month,
                "exp_year": details.exp_year,
            }
        elif isinstance(details, BankTransferDetails):
            method_fields = {
                "holder": details.account_holder_name,
                "account": details.account_number,
            }
        else:
            method_fields = {"type": details.type.value, "token": details.token}
        return self._fingerprints(
            OP_CREATE,
            {
                "transaction_id": request.transaction_id,
                "amount": data.amount,
                "method": request.method.value,
                "capture_mode": request.capture_mode.value,
                "details": method_fields,
            },
        )


def _validate(data: CreatePaymentInput, now: datetime) -> PaymentRequest:
    extra: list[FieldViolation] = []
    if data.transaction_id and (problem := id_problem(data.transaction_id)) is not None:
        extra.append(FieldViolation("payment.transaction_id", problem))
    try:
        request = validate_payment_request(
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
