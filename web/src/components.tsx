// Small shared pieces: labelled fields that show the API's error next to them, loading and
// empty states, status badges, amounts. Everything merchant-provided is rendered as text
// (JSX text nodes); nothing here sets HTML.
import type { ComponentChildren, JSX } from "preact";
import { useState } from "preact/hooks";
import { ApiError } from "./api/client";
import { formatMoney } from "./money";

let nextId = 0;

/** API errors that concern a field without naming it in a BadRequest. */
const REASON_FIELDS: Record<string, string> = {
  AMOUNT_EXCEEDS_REFUNDABLE: "amount",
  AMOUNT_EXCEEDS_AUTHORIZED: "amount",
  AMOUNT_EXCEEDS_REMAINING: "amount",
};

/** The message for field `name` in `error` (a violation of `name` or `*.name`), if any. */
export function fieldError(error: ApiError | null, name: string): string | undefined {
  if (!error) return undefined;
  const own = error.violations.filter((v) => v.field === name || v.field.endsWith(`.${name}`));
  if (own.length) return own.map((v) => v.description).join(" ");
  if (REASON_FIELDS[error.reason] === name) return error.message;
  return undefined;
}

/** The part of `error` no field of `fields` shows. */
export function formError(error: ApiError | null, fields: string[]): string | undefined {
  if (!error) return undefined;
  const shown = fields.some((name) => fieldError(error, name) !== undefined);
  const unmatched = error.violations.filter((v) => !fields.some((n) => v.field === n || v.field.endsWith(`.${n}`)));
  if (shown && unmatched.length === 0) return undefined;
  const extra = unmatched.map((v) => `${v.field}: ${v.description}`).join("; ");
  return extra ? `${error.message} (${extra})` : error.message;
}

export function Field(props: {
  label: string;
  name: string;
  error?: string;
  hint?: string;
  children: (attrs: { id: string; name: string; "aria-invalid": boolean; "aria-describedby"?: string }) => JSX.Element;
}) {
  const [id] = useState(() => `field-${props.name.replace(/\W/g, "-")}-${(nextId += 1)}`);
  const describedBy = [props.hint ? `${id}-hint` : "", props.error ? `${id}-error` : ""].filter(Boolean).join(" ");
  return (
    <div class={`field${props.error ? " invalid" : ""}`}>
      <label for={id}>{props.label}</label>
      {props.children({ id, name: props.name, "aria-invalid": Boolean(props.error), "aria-describedby": describedBy || undefined })}
      {props.hint && (
        <p class="hint" id={`${id}-hint`}>
          {props.hint}
        </p>
      )}
      {props.error && (
        <p class="error" id={`${id}-error`} role="alert" data-field-error={props.name}>
          {props.error}
        </p>
      )}
    </div>
  );
}

export function FormError(props: { message?: string }) {
  return props.message ? (
    <p class="error form-error" role="alert">
      {props.message}
    </p>
  ) : null;
}

export function Loading(props: { what: string }) {
  return (
    <p class="loading" role="status" aria-live="polite">
      Loading {props.what}…
    </p>
  );
}

export function Empty(props: { children: ComponentChildren }) {
  return <div class="empty">{props.children}</div>;
}

// Enums are names in responses; the contract also lets requests send their numbers.
export function Status(props: { value?: string | number | null }) {
  const value = props.value == null ? "" : String(props.value);
  const short = value.replace(/^(TRANSACTION|PAYMENT|REFUND|API_KEY)_(STATUS|STATE)_/, "");
  return (
    <span class={`status status-${short.toLowerCase()}`} title={value}>
      {short.replace(/_/g, " ").toLowerCase()}
    </span>
  );
}

export function Money(props: { minor?: string | number | null; currency?: string }) {
  return <span class="money">{formatMoney(props.minor ?? undefined, props.currency)}</span>;
}

export function DateTime(props: { value?: string }) {
  if (!props.value) return <span>—</span>;
  const date = new Date(props.value);
  return <time dateTime={props.value}>{Number.isNaN(date.getTime()) ? props.value : date.toLocaleString()}</time>;
}
