// Money is an integer count of minor units (a string in proto3 JSON). It is never turned
// into a float: digits are shifted as text and Intl formats the exact decimal string.

/** The currency's exponent (USD 2, JPY 0, KWD 3), from the browser's ISO 4217 data. */
export function exponent(currency: string): number {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions()
      .maximumFractionDigits ?? 2;
  } catch {
    return 2;
  }
}

/** "1250", "USD" -> "12.50" (exact). */
export function toMajor(minor: string | number | null | undefined, currency: string): string {
  const digits = String(minor ?? "0").replace(/^-/, "") || "0";
  const sign = String(minor ?? "").startsWith("-") ? "-" : "";
  const e = exponent(currency);
  if (e === 0) return sign + digits;
  const padded = digits.padStart(e + 1, "0");
  return `${sign}${padded.slice(0, -e)}.${padded.slice(-e)}`;
}

/** Display form: "$12.50", "¥1,250", "KWD 1.250". */
export function formatMoney(minor: string | number | undefined, currency: string | undefined): string {
  const code = currency || "USD";
  const major = toMajor(minor, code);
  try {
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency: code });
    // Intl formats a decimal string exactly (no float on the way).
    return format.format(major as unknown as number);
  } catch {
    return `${major} ${code}`;
  }
}

/** "12.5", "USD" -> "1250"; null when the text is not an amount in that currency. */
export function toMinor(text: string, currency: string): string | null {
  const e = exponent(currency);
  const match = /^\s*(\d+)(?:[.,](\d*))?\s*$/.exec(text);
  if (!match) return null;
  const fraction = match[2] ?? "";
  if (fraction.length > e) return null;
  const minor = (match[1] + fraction.padEnd(e, "0")).replace(/^0+(?=\d)/, "");
  return minor;
}
