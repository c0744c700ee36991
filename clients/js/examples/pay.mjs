#!/usr/bin/env node
// Pays a transaction through the edge's native gRPC port, end to end:
// API key → access token → transaction (USD 19.99) → card payment with manual
// capture → capture, then prints the final transaction as JSON on stdout (progress goes
// to stderr). The merchant exists already: the operator creates merchants inside the
// mesh (the edge never routes the admin API); `make run` prints a demo merchant's key.
//
//   node clients/js/examples/pay.mjs --key key_... --secret sk_...      # uses an API key
//   node clients/js/examples/pay.mjs --target 127.0.0.1:8443 --ca var/certs/ca.pem
//
// Options (or environment variables):
//   --target HOST:PORT   PI_TARGET           edge address (default 127.0.0.1:8080, h2c)
//   --ca FILE            PI_CA_FILE          use TLS, trusting this CA certificate (PEM)
//   --server-name NAME   PI_TLS_SERVER_NAME  name to check in the edge's certificate
//   --key ID             PI_API_KEY_ID       API key id
//   --secret SECRET      PI_API_KEY_SECRET   API key secret

import { randomUUID } from 'node:crypto';
import process from 'node:process';
import { parseArgs } from 'node:util';

import { PiError, createClients, timestampToDate } from '../src/index.js';

const AMOUNT = '1999';
const CURRENCY = 'USD';
const TEST_CARD = '4242424242424242'; // the sandbox connector's "always succeeds" card
const SETTLE_TIMEOUT_MS = 15_000;

function options() {
  const { values } = parseArgs({
    options: {
      target: { type: 'string' },
      ca: { type: 'string' },
      'server-name': { type: 'string' },
      key: { type: 'string' },
      secret: { type: 'string' },
    },
  });
  const env = process.env;
  return {
    target: values.target ?? env.PI_TARGET ?? '127.0.0.1:8080',
    caFile: values.ca ?? env.PI_CA_FILE,
    serverName: values['server-name'] ?? env.PI_TLS_SERVER_NAME,
    keyId: values.key ?? env.PI_API_KEY_ID,
    keySecret: values.secret ?? env.PI_API_KEY_SECRET,
  };
}

function log(message) {
  process.stderr.write(`pay.mjs: ${message}\n`);
}

// Timestamps as RFC 3339 strings, as the HTTP/JSON API prints them.
function transactionJson(transaction) {
  const iso = (ts) => timestampToDate(ts)?.toISOString() ?? null;
  return {
    ...transaction,
    createTime: iso(transaction.createTime),
    updateTime: iso(transaction.updateTime),
  };
}

function apiKey(opts) {
  if (opts.keyId && opts.keySecret) return { id: opts.keyId, secret: opts.keySecret };
  throw new Error(
    'pass --key and --secret (PI_API_KEY_ID, PI_API_KEY_SECRET): `make run` prints a demo ' +
      "merchant's; merchants are created inside the mesh, never through the edge",
  );
}

// Money movements reach the transaction service through the payment service's outbox,
// normally within milliseconds; wait until the transaction shows the capture.
async function settledTransaction(pi, id) {
  const deadline = Date.now() + SETTLE_TIMEOUT_MS;
  for (;;) {
    const { transaction } = await pi.transactions.getTransaction({ id });
    if (transaction.status === 'TRANSACTION_STATUS_COMPLETED' || Date.now() > deadline) {
      return transaction;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function main() {
  const opts = options();
  const tls = opts.caFile ? { caFile: opts.caFile, serverName: opts.serverName } : false;
  const pi = createClients({ target: opts.target, tls });
  try {
    const key = apiKey(opts);
    const token = await pi.auth.issueToken({ apiKeyId: key.id, apiKeySecret: key.secret });
    pi.setToken(token.accessToken);
    log(`issued token ${token.tokenId} (expires in ${token.expiresIn} s)`);

    const { transaction } = await pi.transactions.createTransaction({
      transaction: { amount: AMOUNT, currency: CURRENCY, description: 'JS client example' },
      requestId: randomUUID(),
    });
    log(`created transaction ${transaction.id} (${transaction.status})`);

    const expYear = new Date().getUTCFullYear() + 2;
    const { payment } = await pi.payments.createPayment({
      payment: {
        transactionId: transaction.id,
        method: 'PAYMENT_METHOD_TYPE_CARD',
        card: { number: TEST_CARD, expMonth: 12, expYear, cvc: '123' },
        captureMode: 'CAPTURE_MODE_MANUAL',
      },
      requestId: randomUUID(),
    });
    log(`created payment ${payment.id} (${payment.status}, card ${payment.card?.last4})`);
    if (payment.status !== 'PAYMENT_STATUS_REQUIRES_CAPTURE') {
      throw new Error(`payment ${payment.id} is ${payment.status} (${payment.failureReason})`);
    }

    const captured = await pi.payments.capturePayment(
      { id: payment.id },
      { idempotencyKey: randomUUID() },
    );
    log(`captured ${captured.payment.capturedAmount} on ${payment.id} (${captured.payment.status})`);

    const final = await settledTransaction(pi, transaction.id);
    process.stdout.write(`${JSON.stringify(transactionJson(final), null, 2)}\n`);
    return final.status === 'TRANSACTION_STATUS_COMPLETED' ? 0 : 1;
  } finally {
    pi.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    const detail = error instanceof PiError ? JSON.stringify(error) : (error?.stack ?? error);
    log(`failed: ${detail}`);
    process.exitCode = 1;
  },
);
