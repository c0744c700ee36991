// Capture (partial), cancel and refund (partial, with a reason) for one payment. Each form
// shows the API's own error next to the field it concerns.
import { useState } from "preact/hooks";
import { ApiError, type Api, type Payment, type Refund } from "../api/client";
import { Field, FormError, fieldError, formError } from "../components";
import { toMajor, toMinor } from "../money";

type Done = (message: string, refund?: Refund) => void;

function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const run = async (work: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await work();
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e)));
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, setError, run };
}

function amountOrError(text: string, currency: string, setError: (e: ApiError) => void): string | undefined | null {
  if (!text.trim()) return undefined;
  const minor = toMinor(text, currency);
  if (minor === null) setError(new ApiError(400, "Check the amount.", "", [{ field: "amount", description: `Not an amount in ${currency}.` }]));
  return minor;
}

export function PaymentActions(props: { api: Api; payment: Payment; onDone: Done }) {
  const p = props.payment;
  const captured = BigInt(String(p.capturedAmount ?? "0") || "0");
  const refunded = BigInt(String(p.refundedAmount ?? "0") || "0");
  if (p.status === "PAYMENT_STATUS_REQUIRES_CAPTURE") {
    return (
      <div class="actions">
        <CaptureForm {...props} />
        <CancelButton {...props} />
      </div>
    );
  }
  if (p.status === "PAYMENT_STATUS_SUCCEEDED" && captured > refunded) {
    return (
      <div class="actions">
        <RefundForm {...props} refundable={String(captured - refunded)} />
      </div>
    );
  }
  return null;
}

function CaptureForm(props: { api: Api; payment: Payment; onDone: Done }) {
  const currency = String(props.payment.currency ?? "USD");
  const [amount, setAmount] = useState("");
  const { busy, error, setError, run } = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    const minor = amountOrError(amount, currency, setError);
    if (minor === null) return;
    void run(async () => {
      const p = await props.api.capture(String(props.payment.id), minor);
      setAmount("");
      props.onDone(`Captured ${toMajor(p.capturedAmount, currency)} ${currency} of payment ${p.id}.`);
    });
  };
  return (
    <form class="inline" onSubmit={submit} aria-label={`Capture payment ${props.payment.id}`} noValidate>
      <Field label={`Capture amount (${currency})`} name="amount" error={fieldError(error, "amount")} hint={`Empty: all of ${toMajor(props.payment.amount, currency)}`}>
        {(a) => <input {...a} inputMode="decimal" value={amount} onInput={(e) => setAmount(e.currentTarget.value)} />}
      </Field>
      <FormError message={formError(error, ["amount"])} />
      <button type="submit" disabled={busy}>
        {busy ? "Capturing…" : "Capture"}
      </button>
    </form>
  );
}

function CancelButton(props: { api: Api; payment: Payment; onDone: Done }) {
  const [confirming, setConfirming] = useState(false);
  const { busy, error, run } = useAction();
  const cancel = () =>
    run(async () => {
      const p = await props.api.cancel(String(props.payment.id));
      setConfirming(false);
      props.onDone(`Payment ${p.id} cancelled; the authorization is released.`);
    });
  return (
    <div class="inline">
      {confirming ? (
        <div role="group" aria-label="Confirm cancellation">
          <p>Release this authorization? Nothing more can be captured from it.</p>
          <button type="button" class="danger" disabled={busy} onClick={cancel}>
            {busy ? "Cancelling…" : "Yes, cancel payment"}
          </button>{" "}
          <button type="button" class="secondary" onClick={() => setConfirming(false)}>
            Keep it
          </button>
        </div>
      ) : (
        <button type="button" class="secondary" onClick={() => setConfirming(true)}>
          Cancel payment
        </button>
      )}
      <FormError message={error?.message} />
    </div>
  );
}

function RefundForm(props: { api: Api; payment: Payment; onDone: Done; refundable: string }) {
  const currency = String(props.payment.currency ?? "USD");
  const [amount, setAmount] = useState("");
  const [reason, setReason] = useState("");
  const { busy, error, setError, run } = useAction();
  const submit = (event: Event) => {
    event.preventDefault();
    const minor = amountOrError(amount, currency, setError);
    if (minor === null) return;
    void run(async () => {
      const { refund } = await props.api.refund(String(props.payment.id), minor, reason);
      setAmount("");
      setReason("");
      props.onDone(`Refunded ${toMajor(refund.amount, currency)} ${currency} of payment ${props.payment.id}.`, refund);
    });
  };
  return (
    <form class="inline" onSubmit={submit} aria-label={`Refund payment ${props.payment.id}`} noValidate>
      <Field label={`Refund amount (${currency})`} name="amount" error={fieldError(error, "amount")} hint={`Empty: all that is refundable, ${toMajor(props.refundable, currency)}`}>
        {(a) => <input {...a} inputMode="decimal" value={amount} onInput={(e) => setAmount(e.currentTarget.value)} />}
      </Field>
      <Field label="Reason" name="reason" error={fieldError(error, "reason")}>
        {(a) => <input {...a} value={reason} onInput={(e) => setReason(e.currentTarget.value)} maxLength={500} />}
      </Field>
      <FormError message={formError(error, ["amount", "reason"])} />
      <button type="submit" disabled={busy}>
        {busy ? "Refunding…" : "Refund"}
      </button>
    </form>
  );
}
