// Pay a transaction by card in the sandbox: the documented test numbers are offered, and
// the merchant chooses automatic or manual capture.
import { useState } from "preact/hooks";
import { ApiError, type Api, type Payment, type Transaction } from "../api/client";
import { Field, FormError, fieldError, formError } from "../components";
import { toMajor, toMinor } from "../money";

export const TEST_CARDS = [
  { number: "4242424242424242", label: "4242 4242 4242 4242: approved" },
  { number: "4000000000000002", label: "4000 0000 0000 0002: declined" },
  { number: "4000000000009995", label: "4000 0000 0000 9995: insufficient funds" },
  { number: "4000000000000119", label: "4000 0000 0000 0119: processor timeout" },
];

export function PayForm(props: { api: Api; transaction: Transaction; onPaid: (p: Payment) => void }) {
  const currency = String(props.transaction.currency ?? "USD");
  const [card, setCard] = useState(TEST_CARDS[0].number);
  const [captureMode, setCaptureMode] = useState<"CAPTURE_MODE_AUTOMATIC" | "CAPTURE_MODE_MANUAL">("CAPTURE_MODE_AUTOMATIC");
  const [expiry, setExpiry] = useState(`12/${new Date().getFullYear() + 3}`);
  const [cvc, setCvc] = useState("123");
  const [amount, setAmount] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);

  const submit = async (event: Event) => {
    event.preventDefault();
    const [month, year] = expiry.split("/").map((part) => Number(part.trim()));
    const minor = amount.trim() ? toMinor(amount, currency) : undefined;
    if (minor === null) {
      setError(new ApiError(400, "Check the amount.", "", [{ field: "amount", description: `Not an amount in ${currency}.` }]));
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const payment = await props.api.payByCard({
        transactionId: String(props.transaction.id),
        captureMode,
        card: { number: card.replace(/\s/g, ""), expMonth: month || 0, expYear: year < 100 ? 2000 + year : year || 0, cvc },
        amount: minor,
      });
      props.onPaid(payment);
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e)));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="panel stack" onSubmit={submit} aria-labelledby="pay-title" noValidate>
      <h2 id="pay-title">Pay by card (sandbox)</h2>
      <Field label="Card number" name="card.number" error={fieldError(error, "card.number")} hint="Sandbox test cards; you may also type another number">
        {(a) => (
          <>
            <input {...a} list="test-cards" value={card} onInput={(e) => setCard(e.currentTarget.value)} autoComplete="off" inputMode="numeric" />
            <datalist id="test-cards">
              {TEST_CARDS.map((c) => (
                <option value={c.number}>{c.label}</option>
              ))}
            </datalist>
          </>
        )}
      </Field>
      <fieldset class="choices">
        <legend>Test card</legend>
        {TEST_CARDS.map((c) => (
          <label>
            <input type="radio" name="test-card" checked={card === c.number} onChange={() => setCard(c.number)} /> {c.label}
          </label>
        ))}
      </fieldset>
      <div class="row">
        <Field label="Expiry (MM/YYYY)" name="card.exp_month" error={fieldError(error, "card.exp_month") ?? fieldError(error, "card.exp_year")}>
          {(a) => <input {...a} value={expiry} onInput={(e) => setExpiry(e.currentTarget.value)} autoComplete="off" />}
        </Field>
        <Field label="CVC" name="card.cvc" error={fieldError(error, "card.cvc")}>
          {(a) => <input {...a} value={cvc} onInput={(e) => setCvc(e.currentTarget.value)} autoComplete="off" inputMode="numeric" />}
        </Field>
        <Field
          label={`Amount (${currency})`}
          name="amount"
          error={fieldError(error, "amount")}
          hint={`Empty: what remains, ${toMajor(props.transaction.amount, currency)}`}
        >
          {(a) => <input {...a} inputMode="decimal" value={amount} onInput={(e) => setAmount(e.currentTarget.value)} />}
        </Field>
      </div>
      <fieldset class="choices">
        <legend>Capture</legend>
        <label>
          <input type="radio" name="capture-mode" checked={captureMode === "CAPTURE_MODE_AUTOMATIC"} onChange={() => setCaptureMode("CAPTURE_MODE_AUTOMATIC")} />{" "}
          Automatic: capture at once
        </label>
        <label>
          <input type="radio" name="capture-mode" checked={captureMode === "CAPTURE_MODE_MANUAL"} onChange={() => setCaptureMode("CAPTURE_MODE_MANUAL")} /> Manual:
          authorize now, capture later
        </label>
      </fieldset>
      <FormError message={formError(error, ["card.number", "card.exp_month", "card.exp_year", "card.cvc", "amount"])} />
      <button type="submit" disabled={busy}>
        {busy ? "Paying…" : "Pay"}
      </button>
    </form>
  );
}
