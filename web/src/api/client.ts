// The dashboard's only way to the platform: the public HTTP/JSON API on the same origin,
// through openapi-fetch typed by schema.gen.ts. Types are taken from paths, not from
// schema names, so a regenerated document with other schema names still fits.
import createClient, { type Middleware } from "openapi-fetch";
import type { paths } from "./schema.gen";

type Json<T> = T extends { content: { "application/json": infer B } } ? B : never;
type Ok<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  responses: { 200: infer R };
}
  ? Json<R>
  : never;
type Body<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  requestBody?: infer B;
}
  ? Json<NonNullable<B>>
  : never;

export type Transaction = NonNullable<Ok<"/v1/transactions/{id}", "get">["transaction"]>;
export type Payment = NonNullable<Ok<"/v1/payments/{id}", "get">["payment"]>;
export type Refund = NonNullable<Ok<"/v1/payments/{id}:refund", "post">["refund"]>;
export type ApiKey = NonNullable<Ok<"/v1/api-keys", "post">["apiKey"]>;
export type TransactionStatus = NonNullable<Transaction["status"]>;
type IssuedToken = Ok<"/v1/auth/token", "post">;

export interface FieldViolation {
  field: string;
  description: string;
}

/** A google.rpc.Status answer (or a network failure) as the forms show it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason: string = "",
    readonly violations: FieldViolation[] = [],
  ) {
    super(message);
  }
}

function toApiError(status: number, body: unknown): ApiError {
  const rpc = (body ?? {}) as { message?: string; details?: Record<string, unknown>[] };
  let reason = "";
  const violations: FieldViolation[] = [];
  for (const detail of rpc.details ?? []) {
    const type = String(detail["@type"] ?? "");
    if (type.endsWith("google.rpc.ErrorInfo")) reason = String(detail.reason ?? "");
    if (type.endsWith("google.rpc.BadRequest")) {
      for (const v of (detail.fieldViolations ?? []) as FieldViolation[]) {
        violations.push({ field: String(v.field ?? ""), description: String(v.description ?? "") });
      }
    }
  }
  return new ApiError(status, rpc.message || `HTTP ${status}`, reason, violations);
}

type DeepPartial<T> = T extends (infer U)[] ? DeepPartial<U>[] : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

/** Deeply partial: a document may mark output-only fields (a card's brand, an id) required
 * in the shared message types; requests never send those. Names and types are still checked. */
function body<P extends keyof paths, M extends keyof paths[P]>(value: DeepPartial<Body<P, M>>): Body<P, M> {
  return value as Body<P, M>;
}

export interface Session {
  token: string;
  tokenId: string;
  keyId: string;
  expiresAt: number;
}

export class Api {
  private readonly client = createClient<paths>({ baseUrl: "" });

  /** `onUnauthenticated` runs when the API answers 401 to a signed-in call. */
  constructor(
    private readonly token: () => string | null,
    private readonly onUnauthenticated: () => void,
  ) {
    const auth: Middleware = {
      onRequest: ({ request }) => {
        const token = this.token();
        if (token) request.headers.set("authorization", `Bearer ${token}`);
        return request;
      },
      onResponse: ({ response }) => {
        if (response.status === 401 && this.token()) this.onUnauthenticated();
        return response;
      },
    };
    this.client.use(auth);
  }

  private async run<T>(call: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
    let result: { data?: T; error?: unknown; response: Response };
    try {
      result = await call;
    } catch (error) {
      throw new ApiError(0, `The platform could not be reached (${String(error)}).`);
    }
    if (!result.response.ok || result.data === undefined) {
      throw toApiError(result.response.status, result.error);
    }
    return result.data;
  }

  async signIn(apiKeyId: string, apiKeySecret: string): Promise<Session> {
    const issued: IssuedToken = await this.run(
      this.client.POST("/v1/auth/token", { body: body<"/v1/auth/token", "post">({ apiKeyId, apiKeySecret }) }),
    );
    const seconds = Number(issued.expiresIn ?? 0) || 300;
    return {
      token: String(issued.accessToken ?? ""),
      tokenId: String(issued.tokenId ?? ""),
      keyId: apiKeyId,
      expiresAt: Date.now() + seconds * 1000,
    };
  }

  /** Revokes the session's token (the session itself is already forgotten by then). */
  async signOut(session: Session): Promise<void> {
    await this.run(
      this.client.POST("/v1/auth/token:revoke", {
        body: body<"/v1/auth/token:revoke", "post">({ tokenId: session.tokenId }),
        headers: { authorization: `Bearer ${session.token}` },
      }),
    );
  }

  async listTransactions(filter: {
    status?: string;
    createdFrom?: string;
    createdBefore?: string;
    pageToken?: string;
    pageSize?: number;
  }): Promise<{ transactions: Transaction[]; nextPageToken: string }> {
    // Proto field names, as the transcoder accepts them whatever the document calls them.
    const query: Record<string, string | number> = { page_size: filter.pageSize ?? 20 };
    if (filter.status) query.status = filter.status;
    if (filter.createdFrom) query.create_time_start = filter.createdFrom;
    if (filter.createdBefore) query.create_time_end = filter.createdBefore;
    if (filter.pageToken) query.page_token = filter.pageToken;
    const data = await this.run(this.client.GET("/v1/transactions", { params: { query: query as never } }));
    return { transactions: data.transactions ?? [], nextPageToken: data.nextPageToken ?? "" };
  }

  async getTransaction(id: string): Promise<Transaction> {
    const data = await this.run(this.client.GET("/v1/transactions/{id}", { params: { path: { id } } }));
    return data.transaction as Transaction;
  }

  async createTransaction(input: {
    amount: string;
    currency: string;
    description: string;
    metadata: Record<string, string>;
  }): Promise<Transaction> {
    const data = await this.run(
      this.client.POST("/v1/transactions", {
        // The currency is checked by the API (and listed in the document's enum).
        body: body<"/v1/transactions", "post">({
          ...input,
          currency: input.currency as Body<"/v1/transactions", "post">["currency"],
        }),
        headers: { "idempotency-key": crypto.randomUUID() },
      }),
    );
    return data.transaction as Transaction;
  }

  async listPayments(transactionId: string): Promise<Payment[]> {
    const payments: Payment[] = [];
    let pageToken = "";
    do {
      const query: Record<string, string | number> = { transaction_id: transactionId, page_size: 100 };
      if (pageToken) query.page_token = pageToken;
      const data = await this.run(this.client.GET("/v1/payments", { params: { query: query as never } }));
      payments.push(...(data.payments ?? []));
      pageToken = data.nextPageToken ?? "";
    } while (pageToken);
    return payments;
  }

  async payByCard(input: {
    transactionId: string;
    captureMode: "CAPTURE_MODE_AUTOMATIC" | "CAPTURE_MODE_MANUAL";
    card: { number: string; expMonth: number; expYear: number; cvc: string };
    amount?: string;
  }): Promise<Payment> {
    const data = await this.run(
      this.client.POST("/v1/payments", {
        body: body<"/v1/payments", "post">({ ...input, method: "PAYMENT_METHOD_TYPE_CARD" }),
        headers: { "idempotency-key": crypto.randomUUID() },
      }),
    );
    return data.payment as Payment;
  }

  async capture(id: string, amount?: string): Promise<Payment> {
    const data = await this.run(
      this.client.POST("/v1/payments/{id}:capture", {
        params: { path: { id } },
        body: body<"/v1/payments/{id}:capture", "post">(amount ? { amount } : {}),
        headers: { "idempotency-key": crypto.randomUUID() },
      }),
    );
    return data.payment as Payment;
  }

  async cancel(id: string): Promise<Payment> {
    const data = await this.run(
      this.client.POST("/v1/payments/{id}:cancel", {
        params: { path: { id } },
        body: body<"/v1/payments/{id}:cancel", "post">({}),
        headers: { "idempotency-key": crypto.randomUUID() },
      }),
    );
    return data.payment as Payment;
  }

  async refund(id: string, amount: string | undefined, reason: string): Promise<{ refund: Refund; payment: Payment }> {
    const data = await this.run(
      this.client.POST("/v1/payments/{id}:refund", {
        params: { path: { id } },
        body: body<"/v1/payments/{id}:refund", "post">(amount ? { amount, reason } : { reason }),
        headers: { "idempotency-key": crypto.randomUUID() },
      }),
    );
    return { refund: data.refund as Refund, payment: data.payment as Payment };
  }

  async listApiKeys(): Promise<ApiKey[]> {
    const keys: ApiKey[] = [];
    let pageToken = "";
    do {
      const query: Record<string, string | number> = { page_size: 100 };
      if (pageToken) query.page_token = pageToken;
      const data = await this.run(this.client.GET("/v1/api-keys", { params: { query: query as never } }));
      keys.push(...((data.apiKeys ?? []) as ApiKey[]));
      pageToken = data.nextPageToken ?? "";
    } while (pageToken);
    return keys;
  }

  async createApiKey(displayName: string): Promise<{ apiKey: ApiKey; secret: string }> {
    const data = await this.run(
      this.client.POST("/v1/api-keys", {
        body: body<"/v1/api-keys", "post">({ displayName }),
        headers: { "idempotency-key": crypto.randomUUID() },
      }),
    );
    return { apiKey: data.apiKey as ApiKey, secret: String(data.apiKeySecret ?? "") };
  }

  async revokeApiKey(id: string): Promise<ApiKey> {
    const data = await this.run(
      this.client.POST("/v1/api-keys/{id}:revoke", {
        params: { path: { id } },
        body: body<"/v1/api-keys/{id}:revoke", "post">({}),
      }),
    );
    return data.apiKey as ApiKey;
  }
}
