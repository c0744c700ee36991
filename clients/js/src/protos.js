// Loading the platform's contracts: the services from the .proto sources (proto-loader),
// the google.rpc error types from the descriptor set `make proto` writes.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import protoLoader from '@grpc/proto-loader';

const require = createRequire(import.meta.url);
// protobufjs is what proto-loader itself is built on; resolving it from proto-loader's own
// location uses exactly that copy without making it a separate dependency of the repo.
const requireFromLoader = createRequire(require.resolve('@grpc/proto-loader'));

/** The repository checkout this client lives in (protos/, third_party/, generated/). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** The public services, by the name `createClients` gives their client. */
export const SERVICES = Object.freeze({
  auth: 'pi.auth.v1.AuthService',
  transactions: 'pi.transactions.v1.TransactionService',
  payments: 'pi.payments.v1.PaymentService',
});

export const PROTO_FILES = Object.freeze([
  'pi/auth/v1/auth.proto',
  'pi/transactions/v1/transactions.proto',
  'pi/payments/v1/payments.proto',
]);

/**
 * How messages look in JavaScript. The same conventions as proto3 JSON (and as the
 * HTTP/JSON API): lowerCamelCase field names, int64 as decimal strings (no precision
 * loss above 2^53), enums by name, every field present with its default.
 */
export const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

/**
 * Loads the three public services' package definition from the .proto sources.
 * google/protobuf/*.proto come from proto-loader's bundled copies.
 */
export function loadPackageDefinition({ repoRoot = REPO_ROOT } = {}) {
  return protoLoader.loadSync(PROTO_FILES, {
    ...LOADER_OPTIONS,
    includeDirs: [path.join(repoRoot, 'protos'), path.join(repoRoot, 'third_party', 'googleapis')],
  });
}

let errorTypes = null;
let errorTypesSource = null;

/**
 * The protobufjs root holding google.rpc.Status and the google/rpc/error_details.proto
 * messages, read (once, lazily: only a failing call needs it) from the descriptor set
 * that `make proto` writes for Envoy, which includes those files.
 */
export function loadErrorTypes({ descriptorSet } = {}) {
  const source = descriptorSet ?? path.join(REPO_ROOT, 'generated', 'descriptors.binpb');
  if (errorTypes === null || errorTypesSource !== source) {
    const protobuf = requireFromLoader('protobufjs');
    requireFromLoader('protobufjs/ext/descriptor'); // adds Root.fromDescriptor
    errorTypes = protobuf.Root.fromDescriptor(readFileSync(source));
    errorTypes.resolveAll();
    errorTypesSource = source;
  }
  return errorTypes;
}
