// gRPC errors as the platform sends them: a google.rpc.Status in the
// `grpc-status-details-bin` trailer, with an ErrorInfo (stable reason, domain
// "pi.platform") and, for invalid input, a BadRequest listing the fields at fault.

import grpc from '@grpc/grpc-js';

import { loadErrorTypes } from './protos.js';

const STATUS_DETAILS_TRAILER = 'grpc-status-details-bin';
const TYPE_URL_PREFIX = 'type.googleapis.com/';
const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

/** The name of a gRPC status code, e.g. 3 → "INVALID_ARGUMENT". */
export function codeName(code) {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

/**
 * A failed call. `code`/`codeName` are the gRPC status, `reason` the platform's stable
 * UPPER_SNAKE reason (e.g. "TOKEN_EXPIRED", "IDEMPOTENCY_KEY_REUSED"): branch on those,
 * not on `message`, which is for people.
 */
export class PiError extends Error {
  constructor({ code, message, details = [], method, metadata, cause }) {
    super(message || codeName(code), cause === undefined ? undefined : { cause });
    this.name = 'PiError';
    /** gRPC status code (number), as in grpc.status. */
    this.code = code;
    /** gRPC status code name, e.g. "NOT_FOUND". */
    this.codeName = codeName(code);
    /** The RPC that failed, e.g. "/pi.payments.v1.PaymentService/CapturePayment". */
    this.method = method;
    /** Every decoded google.rpc.Status detail, each with its "@type". */
    this.details = details;
    const info = details.find((d) => d['@type'] === `${TYPE_URL_PREFIX}google.rpc.ErrorInfo`);
    /** ErrorInfo.reason, or null if the server sent no ErrorInfo (e.g. an edge error). */
    this.reason = info?.reason ?? null;
    /** ErrorInfo.domain ("pi.platform" for the services' own errors). */
    this.domain = info?.domain ?? null;
    /** ErrorInfo.metadata: extra facts about the error (string → string). */
    this.errorMetadata = info?.metadata ?? {};
    /** BadRequest field violations: [{field, description}], field as a proto path. */
    this.fieldViolations = details
      .filter((d) => d['@type'] === `${TYPE_URL_PREFIX}google.rpc.BadRequest`)
      .flatMap((d) => d.fieldViolations ?? []);
    /** The response trailers (a grpc.Metadata), when there were any. */
    this.metadata = metadata;
  }

  toJSON() {
    return {
      code: this.code,
      codeName: this.codeName,
      message: this.message,
      reason: this.reason,
      domain: this.domain,
      errorMetadata: this.errorMetadata,
      fieldViolations: this.fieldViolations,
      method: this.method,
    };
  }
}

/**
 * Decodes a serialized google.rpc.Status into {code, message, details}, each detail a
 * plain object with its "@type" (unknown types keep their bytes in `value`).
 */
export function decodeStatus(bytes, options = {}) {
  const root = loadErrorTypes(options);
  const Status = root.lookupType('google.rpc.Status');
  const status = Status.decode(bytes);
  return {
    code: status.code,
    message: status.message,
    details: (status.details ?? []).map((any) => decodeAny(root, any)),
  };
}

function decodeAny(root, any) {
  const typeUrl = any.type_url ?? any.typeUrl ?? '';
  const typeName = typeUrl.slice(typeUrl.lastIndexOf('/') + 1);
  let type = null;
  try {
    type = root.lookupType(typeName);
  } catch {
    // Not a type this client knows: hand the bytes over untouched.
  }
  if (type === null) {
    return { '@type': typeUrl, value: Buffer.from(any.value ?? []) };
  }
  const object = type.toObject(type.decode(any.value), {
    longs: String,
    enums: String,
    bytes: String,
    defaults: true,
    arrays: true,
  });
  return { '@type': typeUrl, ...plain(type, object) };
}

// Types read from a descriptor set keep their proto (snake_case) field names and show map
// fields as repeated key/value entries. Give them the shape the rest of the client uses
// (proto3 JSON): lowerCamelCase names, maps as objects (ErrorInfo.metadata).
function plain(type, object) {
  const result = {};
  for (const field of type.fieldsArray) {
    let value = object[field.name];
    const nested = field.resolvedType?.fieldsArray ? field.resolvedType : null;
    if (nested && field.repeated && nested.options?.map_entry) {
      const valueType = nested.fields.value.resolvedType?.fieldsArray
        ? nested.fields.value.resolvedType
        : null;
      value = Object.fromEntries(
        (value ?? []).map((e) => [e.key, valueType ? plain(valueType, e.value) : e.value]),
      );
    } else if (nested && field.repeated) {
      value = (value ?? []).map((item) => plain(nested, item));
    } else if (nested && value != null) {
      value = plain(nested, value);
    }
    result[field.name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase())] = value;
  }
  return result;
}

/** Turns a grpc-js ServiceError into a PiError, decoding the status details trailer. */
export function toPiError(error, { method, descriptorSet } = {}) {
  if (error instanceof PiError) return error;
  const metadata = error?.metadata;
  const raw = metadata?.get?.(STATUS_DETAILS_TRAILER)?.[0];
  let details = [];
  let message = error?.details ?? error?.message;
  if (raw) {
    try {
      const status = decodeStatus(raw, { descriptorSet });
      details = status.details;
      message = status.message || message;
    } catch (decodeError) {
      details = [{ '@type': 'pi.client/UndecodableStatus', error: String(decodeError) }];
    }
  }
  return new PiError({
    code: typeof error?.code === 'number' ? error.code : grpc.status.UNKNOWN,
    message,
    details,
    method,
    metadata,
    cause: error,
  });
}
