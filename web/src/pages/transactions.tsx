// The transaction list: status and creation-date filters and cursor pagination, exactly as
// ListTransactions offers them. Filters and the cursor live in the URL (#/transactions?...),
// so Back returns to the same page; earlier cursors are remembered for "Previous".
import { useEffect, useState } from "preact/hooks";
import { ApiError, type Api, type Transaction } from "../api/client";
import { DateTime, Empty, FormError, Loading, Money, Status } from "../components";
import { href, navigate } from "../router";

export const TRANSACTION_STATUSES = [
  "TRANSACTION_STATUS_PENDING",
  "TRANSACTION_STATUS_AUTHORIZED",
  "TRANSACTION_STATUS_COMPLETED",
  "TRANSACTION_STATUS_PARTIALLY_REFUNDED",
  "TRANSACTION_STATUS_REFUNDED",
  "TRANSACTION_STATUS_CANCELLED",
  "TRANSACTION_STATUS_FAILED",
];

/** A date input's day as the RFC 3339 instant its UTC day starts at, `days` later. */
function dayStart(day: string, days = 0): string | undefined {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(day)) return undefined;
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() + days);
  return date.toISOString().replace(".000Z", "Z");
}

export function TransactionsPage(props: { api: Api; query: URLSearchParams }) {
  const status = props.query.get("status") ?? "";
  const from = props.query.get("from") ?? "";
  const to = props.query.get("to") ?? "";
  const cursors = (props.query.get("cursors") ?? "").split(",").filter(Boolean);
  const pageToken = cursors[cursors.length - 1] ?? "";
  const [page, setPage] = useState<{ transactions: Transaction[]; nextPageToken: string } | null>(null);
  const [error, setError] = useState<ApiError | null>(null);

  useEffect(() => {
    let live = true;
    setPage(null);
    setError(null);
    props.api
      .listTransactions({ status, createdFrom: dayStart(from), createdBefore: dayStart(to, 1), pageToken })
      .then((p) => live && setPage(p))
      .catch((e) => live && setError(e instanceof ApiError ? e : new ApiError(0, String(e))));
    return () => {
      live = false;
    };
  }, [props.query.toString()]);

  const go = (changes: Record<string, string>) => {
    const next = new URLSearchParams(props.query);
    for (const [key, value] of Object.entries(changes)) {
      if (value) next.set(key, value);
      else next.delete(key);
    }
    navigate(href.transactions(next));
  };
  const filter = (event: Event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget as HTMLFormElement);
    go({ status: String(form.get("status") ?? ""), from: String(form.get("from") ?? ""), to: String(form.get("to") ?? ""), cursors: "" });
  };

  return (
    <section aria-labelledby="transactions-title">
      <div class="title-row">
        <h1 id="transactions-title">Transactions</h1>
        <a class="button" href={href.newTransaction()}>
          New transaction
        </a>
      </div>
      <form class="filters" onSubmit={filter} aria-label="Filter transactions">
        <label>
          Status
          <select name="status" value={status}>
            <option value="">Any status</option>
            {TRANSACTION_STATUSES.map((s) => (
              <option value={s}>{s.replace("TRANSACTION_STATUS_", "").replace(/_/g, " ").toLowerCase()}</option>
            ))}
          </select>
        </label>
        <label>
          Created from
          <input type="date" name="from" value={from} />
        </label>
        <label>
          Created to
          <input type="date" name="to" value={to} />
        </label>
        <button type="submit">Apply filters</button>
        {(status || from || to) && (
          <button type="button" class="secondary" onClick={() => navigate(href.transactions())}>
            Clear
          </button>
        )}
      </form>
      <FormError message={error?.message} />
      {!page && !error && <Loading what="transactions" />}
      {page && page.transactions.length === 0 && (
        <Empty>
          {status || from || to || cursors.length ? (
            <p>No transactions match these filters.</p>
          ) : (
            <p>
              No transactions yet. <a href={href.newTransaction()}>Create your first transaction</a>.
            </p>
          )}
        </Empty>
      )}
      {page && page.transactions.length > 0 && (
        <table class="list">
          <caption class="visually-hidden">Transactions, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Created</th>
              <th scope="col">Transaction</th>
              <th scope="col">Description</th>
              <th scope="col" class="num">
                Amount
              </th>
              <th scope="col">Status</th>
            </tr>
          </thead>
          <tbody>
            {page.transactions.map((t) => (
              <tr key={t.id} data-transaction-id={t.id}>
                <td>
                  <DateTime value={t.createTime} />
                </td>
                <td>
                  <a href={href.transaction(String(t.id))}>{t.id}</a>
                </td>
                <td class="description">{t.description}</td>
                <td class="num">
                  <Money minor={t.amount} currency={t.currency} />
                </td>
                <td>
                  <Status value={t.status} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <nav class="pager" aria-label="Pages">
        <button type="button" class="secondary" disabled={cursors.length === 0} onClick={() => go({ cursors: cursors.slice(0, -1).join(",") })}>
          Previous page
        </button>
        <button
          type="button"
          class="secondary"
          disabled={!page?.nextPageToken}
          onClick={() => page && go({ cursors: [...cursors, page.nextPageToken].join(",") })}
        >
          Next page
        </button>
      </nav>
    </section>
  );
}
