// The client against an in-process grpc-js server that speaks the same contracts: request
// and response mapping, credentials and idempotency metadata, and google.rpc.Status
// decoding. No platform services needed (tests/e2e/test_js_client.py covers the mesh).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { PiError, createClients, isPiError, loadPackageDefinition } from '../src/index.js';
import { loadErrorTypes } from '../src/protos.js';

const TYPE = 'type.googleapis.com/';

function statusDetails(code, message, details) {
  const root = loadErrorTypes();
  const any = ([name, payload]) => {
    const type = root.lookupType(name);
    return { type_url: TYPE + name, value: type.encode(type.fromObject(payload)).finish() };
  };
  const Status = root.lookupType('google.rpc.Status');
  return Buffer.from(
    Status.encode(Status.fromObject({ code, message, details: details.map(any) })).finish(),
  );
}

function failWith(callback, code, message, details) {
  const metadata = new grpc.Metadata();
  if (details) metadata.set('grpc-status-details-bin', statusDetails(code, message, details));
  callback({ code, details: message, metadata });
}

describe('createClients', () => {
  let server;
  let pi;
  const seen = [];

  before(async () => {
    const pkg = grpc.loadPackageDefinition(loadPackageDefinition());
    server = new grpc.Server();
    server.addService(pkg.pi.transactions.v1.TransactionService.service, {
      CreateTransaction(call, callback) {
        seen.push(call.metadata.getMap());
        const { transaction } = call.request;
        if (transaction.amount === '0') {
          failWith(callback, grpc.status.INVALID_ARGUMENT, 'The amount must be positive.', [
            [
              'google.rpc.ErrorInfo',
              {
                reason: 'INVALID_ARGUMENT',
                domain: 'pi.platform',
                metadata: [{ key: 'a_key', value: 'v' }], // a map, as descriptor-set types see it
              },
            ],
            [
              'google.rpc.BadRequest',
              {
                field_violations: [
                  { field: 'transaction.amount', description: 'must be greater than zero' },
                ],
              },
            ],
          ]);
          return;
        }
        callback(null, {
          transaction: {
            ...transaction,
            id: 'txn_1',
            status: 'TRANSACTION_STATUS_PENDING',
            createTime: { seconds: '1700000000', nanos: 0 },
          },
        });
      },
      GetTransaction(call, callback) {
        if (call.request.id === 'slow') {
          setTimeout(() => callback(null, {}), 2_000);
          return;
        }
        failWith(callback, grpc.status.NOT_FOUND, 'No such transaction.', null);
      },
      ListTransactions(call, callback) {
        callback(null, { transactions: [], nextPageToken: '' });
      },
      CancelTransaction(call, callback) {
        callback({ code: grpc.status.UNIMPLEMENTED, details: 'not here' });
      },
    });
    const port = await new Promise((resolve, reject) => {
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      );
    });
    pi = createClients({ target: `127.0.0.1:${port}`, tls: false, token: 'tok_abc' });
  });

  after(() => {
    pi.close();
    server.forceShutdown();
  });

  test('maps requests and responses in proto3 JSON conventions', async () => {
    const { transaction } = await pi.transactions.createTransaction(
      { transaction: { amount: 1999, currency: 'USD', metadata: { order: '42' } } },
      { idempotencyKey: 'idem-1' },
    );
    assert.equal(transaction.id, 'txn_1');
    assert.equal(transaction.amount, '1999'); // int64 as a string, never a lossy number
    assert.equal(transaction.capturedAmount, '0'); // defaults are present
    assert.equal(transaction.status, 'TRANSACTION_STATUS_PENDING'); // enums by name
    assert.deepEqual(transaction.metadata, { order: '42' });
    assert.equal(transaction.createTime.seconds, '1700000000');
  });

  test('sends the bearer token and the idempotency key as metadata', async () => {
    await pi.transactions.createTransaction(
      { transaction: { amount: '5', currency: 'USD' } },
      { idempotencyKey: 'idem-2', token: 'tok_override' },
    );
    const metadata = seen.at(-1);
    assert.equal(metadata.authorization, 'Bearer tok_override');
    assert.equal(metadata['idempotency-key'], 'idem-2');
  });

  test('decodes ErrorInfo and BadRequest from grpc-status-details-bin', async () => {
    const error = await pi.transactions
      .createTransaction({ transaction: { amount: '0', currency: 'USD' } })
      .then(() => assert.fail('expected an error'), (e) => e);
    assert.ok(error instanceof PiError);
    assert.equal(error.codeName, 'INVALID_ARGUMENT');
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(error.message, 'The amount must be positive.');
    assert.equal(error.reason, 'INVALID_ARGUMENT');
    assert.equal(error.domain, 'pi.platform');
    assert.deepEqual(error.errorMetadata, { a_key: 'v' });
    assert.deepEqual(
      error.fieldViolations.map(({ field, description }) => ({ field, description })),
      [{ field: 'transaction.amount', description: 'must be greater than zero' }],
    );
    assert.equal(error.method, '/pi.transactions.v1.TransactionService/CreateTransaction');
    assert.ok(isPiError(error, 'INVALID_ARGUMENT', 'INVALID_ARGUMENT'));
    assert.equal(JSON.parse(JSON.stringify(error)).fieldViolations.length, 1);
  });

  test('an error without details still carries its code', async () => {
    const error = await pi.transactions.getTransaction({ id: 'txn_x' }).catch((e) => e);
    assert.ok(isPiError(error, 'NOT_FOUND'));
    assert.equal(error.reason, null);
    assert.deepEqual(error.fieldViolations, []);
  });

  test('every call has a deadline', async () => {
    const error = await pi.transactions
      .getTransaction({ id: 'slow' }, { timeoutMs: 100 })
      .catch((e) => e);
    assert.ok(isPiError(error, 'DEADLINE_EXCEEDED'));
  });

  test('exposes every public RPC in lowerCamelCase, and no internal service', () => {
    assert.deepEqual(Object.keys(pi.payments).sort(), [
      'cancelPayment',
      'capturePayment',
      'createPayment',
      'getPayment',
      'listPayments',
      'refundPayment',
    ]);
    assert.ok(typeof pi.auth.issueToken === 'function');
    assert.equal(pi.auth.listRevokedTokens, undefined);
  });
});

test('createClients requires a target', () => {
  assert.throws(() => createClients({}), /target/);
});
