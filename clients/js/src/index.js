// Pi Platform JavaScript client: promise-returning stubs for AuthService,
// TransactionService and PaymentService, loaded at run time from the .proto contracts.
//
//   import { createClients } from '@pi-platform/client';
//   const pi = createClients({ target: '127.0.0.1:8080', tls: false, token });
//   const { transaction } = await pi.transactions.createTransaction(
//     { transaction: { amount: '1999', currency: 'USD' } },
//     { idempotencyKey: crypto.randomUUID() },
//   );

import { readFileSync } from 'node:fs';

import grpc from '@grpc/grpc-js';

import { PiError, toPiError } from './errors.js';
import { SERVICES, loadPackageDefinition } from './protos.js';

export { PiError, codeName, decodeStatus, toPiError } from './errors.js';
export { LOADER_OPTIONS, PROTO_FILES, REPO_ROOT, SERVICES, loadPackageDefinition } from './protos.js';

/** Deadline of a call that does not set `timeoutMs`. Every call has a deadline. */
export const DEFAULT_TIMEOUT_MS = 10_000;

let cachedDefinition = null;

/**
 * Creates the three service clients over one HTTP/2 channel.
 *
 * @param {object} options
 * @param {string} options.target host:port of the edge (Envoy), e.g. "127.0.0.1:8080".
 * @param {string} [options.token] bearer credential sent as `authorization: Bearer ...`
 *   (an access token from auth.issueToken, or the admin token for createMerchant);
 *   change it later with setToken().
 * @param {boolean|{ca?: string|Buffer, caFile?: string, serverName?: string}} [options.tls]
 *   true (the default): TLS with the system's roots; an object: TLS trusting `ca` (PEM) or
 *   `caFile`, checking the certificate for `serverName`; false: cleartext h2c, only for
 *   a local edge.
 * @param {number} [options.timeoutMs] default deadline of each call.
 * @param {object} [options.channelOptions] extra grpc-js channel options.
 * @param {string} [options.descriptorSet] descriptor set with google.rpc types (errors).
 */
export function createClients({
  target,
  token = null,
  tls = true,
  timeoutMs = DEFAULT_TIMEOUT_MS,
  channelOptions = {},
  descriptorSet,
} = {}) {
  if (!target) throw new TypeError('createClients: `target` (host:port) is required');
  cachedDefinition ??= grpc.loadPackageDefinition(loadPackageDefinition());
  const { credentials, options: tlsOptions } = channelCredentials(tls);
  const options = {
    'grpc.keepalive_time_ms': 30_000,
    'grpc.keepalive_timeout_ms': 10_000,
    ...tlsOptions,
    ...channelOptions,
  };
  const channel = new grpc.Channel(target, credentials, options);
  const state = { token, timeoutMs, descriptorSet };

  const clients = {};
  const stubs = [];
  for (const [name, fullName] of Object.entries(SERVICES)) {
    const Stub = fullName.split('.').reduce((pkg, part) => pkg[part], cachedDefinition);
    const stub = new Stub(target, credentials, { ...options, channelOverride: channel });
    stubs.push(stub);
    clients[name] = promiseClient(stub, Stub.service, state);
  }

  return Object.freeze({
    ...clients,
    /** Replaces the bearer credential of later calls (e.g. after a token refresh). */
    setToken(newToken) {
      state.token = newToken;
    },
    /** Waits until the channel is connected, or rejects after `timeoutMs`. */
    waitForReady(waitMs = timeoutMs) {
      return new Promise((resolve, reject) => {
        stubs[0].waitForReady(Date.now() + waitMs, (error) => (error ? reject(error) : resolve()));
      });
    },
    /** Closes the channel; pending calls fail with CANCELLED. */
    close() {
      channel.close();
    },
  });
}

function channelCredentials(tls) {
  if (tls === false) return { credentials: grpc.credentials.createInsecure(), options: {} };
  if (tls === true || tls === undefined || tls === null) {
    return { credentials: grpc.credentials.createSsl(), options: {} };
  }
  const ca = tls.ca ?? (tls.caFile ? readFileSync(tls.caFile) : null);
  const options = tls.serverName
    ? { 'grpc.ssl_target_name_override': tls.serverName, 'grpc.default_authority': tls.serverName }
    : {};
  return {
    credentials: grpc.credentials.createSsl(ca === null ? null : Buffer.from(ca)),
    options,
  };
}

/**
 * Wraps a grpc-js stub: one promise-returning method per RPC, named in lowerCamelCase
 * (createTransaction, capturePayment, ...). Each takes `(request, callOptions)`:
 *   token           bearer credential for this call only (overrides the client's)
 *   idempotencyKey  sent as `idempotency-key` metadata (or set `requestId` in the request)
 *   timeoutMs       deadline of this call
 *   metadata        extra metadata, an object of string values
 * and resolves to the response message, or rejects with a PiError.
 */
function promiseClient(stub, serviceDefinition, state) {
  const client = {};
  for (const [rpcName, method] of Object.entries(serviceDefinition)) {
    const jsName = method.originalName ?? rpcName[0].toLowerCase() + rpcName.slice(1);
    client[jsName] = (request = {}, callOptions = {}) =>
      unaryCall(stub, rpcName, method.path, request, callOptions, state);
  }
  return Object.freeze(client);
}

function unaryCall(stub, rpcName, path, request, callOptions, state) {
  const metadata = new grpc.Metadata();
  const token = callOptions.token ?? state.token;
  if (token) metadata.set('authorization', `Bearer ${token}`);
  if (callOptions.idempotencyKey) metadata.set('idempotency-key', callOptions.idempotencyKey);
  for (const [key, value] of Object.entries(callOptions.metadata ?? {})) {
    metadata.set(key, value);
  }
  const deadline = Date.now() + (callOptions.timeoutMs ?? state.timeoutMs);
  return new Promise((resolve, reject) => {
    stub[rpcName](request, metadata, { deadline }, (error, response) => {
      if (error) {
        reject(toPiError(error, { method: path, descriptorSet: state.descriptorSet }));
      } else {
        resolve(response);
      }
    });
  });
}

/** True if `error` is a PiError with this gRPC code name and (optionally) reason. */
export function isPiError(error, codeNameOrNull = null, reason = null) {
  return (
    error instanceof PiError &&
    (codeNameOrNull === null || error.codeName === codeNameOrNull) &&
    (reason === null || error.reason === reason)
  );
}

/** A google.protobuf.Timestamp ({seconds, nanos}, seconds as a string) as a Date. */
export function timestampToDate(timestamp) {
  if (!timestamp) return null;
  return new Date(Number(timestamp.seconds) * 1000 + Math.floor((timestamp.nanos ?? 0) / 1e6));
}
