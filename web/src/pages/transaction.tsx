// One transaction: its amounts (authorized, captured, refunded) in its currency, its
// payments with their actions (capture, cancel, refund), and a form to pay it by card.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, type Api, type Payment, type Refund, type Transaction } from "../api/client";
import { DateTime, Empty, FormError, Loading, Money, Status } from "../components";
import { href } from "../router";
import { PayForm } from "./pay-form";
import { PaymentActions } from "./payment-actions";

const PAYABLE = new Set(["TRANSACTION_STATUS_PENDING", "TRANSACTION_STATUS_FAILED"]);

function paymentMethod(p: Payment): string {
  const card = p.card as { brand?: string; last4?: string } | undefined;
  if (card?.last4) return `${String(card.brand ?? "").replace("CARD_BRAND_", "")} •••• ${card.last4}`;
  return String(p.method ?? "").replace("PAYMENT_METHOD_TYPE_", "").replace(/_/g, " ").toLowerCase();
}

export function TransactionPage(props: { api: Api; id: string }) {
  const [transaction, setTransaction] = useState<Transaction | null>(null);
  const [payments, setPayments] = useState<Payment[] | null>(null);
  const [refunds, setRefunds] = useState<Refund[]>([]);
  const [error, setError] = useState<ApiError | null>(null);
  const [message, setMessage] = useState("");
  const [version, setVersion] = useState(0);

  useEffect(() => {
    let live = true;
    Promise.all([props.api.getTransaction(props.id), props.api.listPayments(props.id)])
      .then(([t, p]) => {
        if (!live) return;
        setTransaction(t);
        setPayments(p);
        setError(null);
      })
      .catch((e) => live && setError(e instanceof ApiError ? e : new ApiError(0, String(e))));
    return () => {
      live = false;
    };
  }, [props.id, version]);

  // Payments reach the transaction's ledger asynchronously (an outbox): after an action
  // the page reads again a few times, so the amounts catch up without a manual reload.
  const settling = useRef<number[]>([]);
  useEffect(() => () => settling.current.forEach(clearTimeout), []);
  const changed = (what: string) => {
    setMessage(what);
    setVersion((v) => v + 1);
    settling.current.forEach(clearTimeout);
    settling.current = [400, 1200, 2500, 5000].map((ms) => window.setTimeout(() => setVersion((v) => v + 1), ms));
  };

  if (error && !transaction) {
    return (
      <section>
        <h1>Transaction</h1>
        <FormError message={error.status === 404 ? `No transaction ${props.id} (${error.message})` : error.message} />
        <p>
          <a href={href.transactions()}>Back to transactions</a>
        </p>
      </section>
    );
  }
  if (!transaction) return <Loading what="the transaction" />;

  const t = transaction;
  const metadata = Object.entries((t.metadata ?? {}) as Record<string, string>);
  return (
    <section aria-labelledby="transaction-title">
      <p class="crumbs">
        <a href={href.transactions()}>Transactions</a> /
      </p>
      <div class="title-row">
        <h1 id="transaction-title">
          <Money minor={t.amount} currency={t.currency} /> <Status value={t.status} />
        </h1>
      </div>
      <p class="id">
        <code>{t.id}</code>
      </p>
      {message && (
        <p class="notice" role="status">
          {message}
        </p>
      )}
      <dl class="amounts" aria-label="Amounts">
        <div>
          <dt>Amount</dt>
          <dd data-amount="amount">
            <Money minor={t.amount} currency={t.currency} />
          </dd>
        </div>
        <div>
          <dt>Authorized</dt>
          <dd data-amount="authorized">
            <Money minor={t.authorizedAmount} currency={t.currency} />
          </dd>
        </div>
        <div>
          <dt>Captured</dt>
          <dd data-amount="captured">
            <Money minor={t.capturedAmount} currency={t.currency} />
          </dd>
        </div>
        <div>
          <dt>Refunded</dt>
          <dd data-amount="refunded">
            <Money minor={t.refundedAmount} currency={t.currency} />
          </dd>
        </div>
      </dl>
      <dl class="facts">
        <dt>Status</dt>
        <dd data-field="status">{t.status}</dd>
        <dt>Description</dt>
        <dd class="description" data-field="description">
          {t.description || "—"}
        </dd>
        <dt>Created</dt>
        <dd>
          <DateTime value={t.createTime} />
        </dd>
        <dt>Updated</dt>
        <dd>
          <DateTime value={t.updateTime} />
        </dd>
        {metadata.map(([key, value]) => (
          <>
            <dt>Metadata: {key}</dt>
            <dd>{value}</dd>
          </>
        ))}
      </dl>

      {PAYABLE.has(String(t.status)) && (
        <PayForm api={props.api} transaction={t} onPaid={(p) => changed(`Payment ${p.id}: ${String(p.status).replace("PAYMENT_STATUS_", "")}`)} />
      )}

      <h2 id="payments-title">Payments</h2>
      {payments === null && <Loading what="payments" />}
      {payments !== null && payments.length === 0 && (
        <Empty>
          <p>No payment attempts yet.</p>
        </Empty>
      )}
      {payments !== null &&
        payments.map((p) => (
          <article class="payment" aria-label={`Payment ${p.id}`} data-payment-id={p.id} key={p.id}>
            <header>
              <strong>{paymentMethod(p)}</strong> <Status value={p.status} /> <code>{p.id}</code>
            </header>
            <dl class="amounts small">
              <div>
                <dt>Amount</dt>
                <dd>
                  <Money minor={p.amount} currency={p.currency} />
                </dd>
              </div>
              <div>
                <dt>Captured</dt>
                <dd>
                  <Money minor={p.capturedAmount} currency={p.currency} />
                </dd>
              </div>
              <div>
                <dt>Refunded</dt>
                <dd>
                  <Money minor={p.refundedAmount} currency={p.currency} />
                </dd>
              </div>
              <div>
                <dt>Capture</dt>
                <dd>{String(p.captureMode ?? "").replace("CAPTURE_MODE_", "").toLowerCase()}</dd>
              </div>
            </dl>
            {p.failureReason && p.failureReason !== "PAYMENT_FAILURE_REASON_UNSPECIFIED" && (
              <p class="error" data-failure-reason={p.failureReason}>
                Declined: {String(p.failureReason).replace("PAYMENT_FAILURE_REASON_", "").replace(/_/g, " ").toLowerCase()}
              </p>
            )}
            <p class="muted">
              Created <DateTime value={p.createTime} />
            </p>
            <PaymentActions
              api={props.api}
              payment={p}
              onDone={(what, refund) => {
                if (refund) setRefunds((r) => [refund, ...r]);
                changed(what);
              }}
            />
          </article>
        ))}

      <h2>Refunds</h2>
      <p class="muted">
        Each payment shows its refunded total. The API has no refund listing, so the refunds listed here are those made in this session.
      </p>
      {refunds.length === 0 ? (
        <Empty>
          <p>No refunds made in this session.</p>
        </Empty>
      ) : (
        <table class="list">
          <thead>
            <tr>
              <th scope="col">Refund</th>
              <th scope="col">Payment</th>
              <th scope="col" class="num">
                Amount
              </th>
              <th scope="col">Reason</th>
              <th scope="col">Status</th>
            </tr>
          </thead>
          <tbody>
            {refunds.map((r) => (
              <tr key={r.id}>
                <td>
                  <code>{r.id}</code>
                </td>
                <td>
                  <code>{r.paymentId}</code>
                </td>
                <td class="num">
                  <Money minor={r.amount} currency={r.currency} />
                </td>
                <td class="description">{r.reason}</td>
                <td>
                  <Status value={r.status} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
