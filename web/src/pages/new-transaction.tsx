import { useState } from "preact/hooks";
import { ApiError, type Api } from "../api/client";
import { Field, FormError, fieldError, formError } from "../components";
import { exponent, toMinor } from "../money";
import { href, navigate } from "../router";

export const CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "KWD"];

function parseMetadata(text: string): Record<string, string> | null {
  const metadata: Record<string, string> = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at <= 0) return null;
    metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return metadata;
}

export function NewTransactionPage(props: { api: Api }) {
  const [amount, setAmount] = useState("");
  const [currency, setCurrency] = useState("USD");
  const [description, setDescription] = useState("");
  const [metadata, setMetadata] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);

  const submit = async (event: Event) => {
    event.preventDefault();
    const minor = toMinor(amount, currency);
    const meta = parseMetadata(metadata);
    const local: { field: string; description: string }[] = [];
    if (minor === null) {
      const e = exponent(currency);
      local.push({ field: "amount", description: `Enter an amount in ${currency}${e ? ` with at most ${e} decimals` : " without decimals"}.` });
    }
    if (meta === null) local.push({ field: "metadata", description: "One key=value pair per line." });
    if (local.length) {
      setError(new ApiError(400, "Check the highlighted fields.", "", local));
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const created = await props.api.createTransaction({ amount: minor!, currency, description, metadata: meta! });
      navigate(href.transaction(String(created.id)));
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e)));
      setBusy(false);
    }
  };

  const fields = ["amount", "currency", "description", "metadata"];
  return (
    <section aria-labelledby="new-title">
      <h1 id="new-title">New transaction</h1>
      <p>What the customer owes. Pay it on the next page, with a sandbox test card.</p>
      <form class="stack" onSubmit={submit} aria-label="New transaction" noValidate>
        <div class="row">
          <Field label={`Amount (${currency})`} name="amount" error={fieldError(error, "amount")} hint="In the currency's major unit, e.g. 50.00">
            {(a) => <input {...a} inputMode="decimal" value={amount} onInput={(e) => setAmount(e.currentTarget.value)} required />}
          </Field>
          <Field label="Currency" name="currency" error={fieldError(error, "currency")}>
            {(a) => (
              <select {...a} value={currency} onChange={(e) => setCurrency(e.currentTarget.value)}>
                {CURRENCIES.map((c) => (
                  <option value={c}>{c}</option>
                ))}
              </select>
            )}
          </Field>
        </div>
        <Field label="Description" name="description" error={fieldError(error, "description")}>
          {(a) => <input {...a} value={description} onInput={(e) => setDescription(e.currentTarget.value)} maxLength={1000} />}
        </Field>
        <Field label="Metadata" name="metadata" error={fieldError(error, "metadata")} hint="Optional: one key=value per line">
          {(a) => <textarea {...a} rows={3} value={metadata} onInput={(e) => setMetadata(e.currentTarget.value)} />}
        </Field>
        <FormError message={formError(error, fields)} />
        <button type="submit" disabled={busy}>
          {busy ? "Creating…" : "Create transaction"}
        </button>
      </form>
    </section>
  );
}
