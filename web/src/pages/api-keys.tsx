// API keys: list, create (the secret is shown once, with a copy button) and revoke (after
// a confirmation). Fields the page does not know (e.g. scopes) are shown as they come.
import { useEffect, useState } from "preact/hooks";
import { ApiError, type Api, type ApiKey, type Session } from "../api/client";
import { DateTime, Empty, Field, FormError, Loading, Status, fieldError, formError } from "../components";

const KNOWN = new Set(["id", "merchantId", "displayName", "state", "createTime", "revokeTime"]);

function extras(key: ApiKey): [string, string][] {
  return Object.entries(key as Record<string, unknown>)
    .filter(([name, value]) => !KNOWN.has(name) && value !== "" && value !== null && value !== undefined)
    .map(([name, value]) => [name, Array.isArray(value) ? value.join(", ") : typeof value === "object" ? JSON.stringify(value) : String(value)]);
}

export function ApiKeysPage(props: { api: Api; session: Session }) {
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [loadError, setLoadError] = useState<ApiError | null>(null);
  const [version, setVersion] = useState(0);
  const [created, setCreated] = useState<{ apiKey: ApiKey; secret: string } | null>(null);
  const [message, setMessage] = useState("");

  useEffect(() => {
    let live = true;
    props.api
      .listApiKeys()
      .then((k) => live && (setKeys(k), setLoadError(null)))
      .catch((e) => live && setLoadError(e instanceof ApiError ? e : new ApiError(0, String(e))));
    return () => {
      live = false;
    };
  }, [version]);

  return (
    <section aria-labelledby="keys-title">
      <h1 id="keys-title">API keys</h1>
      <p>Keys sign in to the API (POST /v1/auth/token). A secret is shown once, when its key is created; the platform keeps only a hash.</p>
      {message && (
        <p class="notice" role="status">
          {message}
        </p>
      )}
      <CreateKey
        api={props.api}
        onCreated={(c) => {
          setCreated(c);
          setMessage("");
          setVersion((v) => v + 1);
        }}
      />
      {created && <SecretOnce created={created} onDismiss={() => setCreated(null)} />}
      <h2>Your keys</h2>
      <FormError message={loadError?.message} />
      {!keys && !loadError && <Loading what="API keys" />}
      {keys && keys.length === 0 && (
        <Empty>
          <p>No API keys.</p>
        </Empty>
      )}
      {keys && keys.length > 0 && (
        <table class="list">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Key id</th>
              <th scope="col">State</th>
              <th scope="col">Created</th>
              <th scope="col">Details</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.map((k) => (
              <tr key={k.id} data-key-id={k.id}>
                <td class="description">{k.displayName || "—"}</td>
                <td>
                  <code>{k.id}</code>
                </td>
                <td>
                  <Status value={k.state} />
                </td>
                <td>
                  <DateTime value={k.createTime} />
                </td>
                <td>
                  {extras(k).map(([name, value]) => (
                    <div>
                      {name}: {value}
                    </div>
                  ))}
                </td>
                <td>
                  {k.state === "API_KEY_STATE_ACTIVE" && (
                    <RevokeKey
                      api={props.api}
                      apiKey={k}
                      own={k.id === props.session.keyId}
                      onRevoked={() => {
                        setMessage(`Key ${k.id} is revoked: it can no longer sign in.`);
                        setVersion((v) => v + 1);
                      }}
                    />
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function CreateKey(props: { api: Api; onCreated: (c: { apiKey: ApiKey; secret: string }) => void }) {
  const [name, setName] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const submit = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      props.onCreated(await props.api.createApiKey(name.trim()));
      setName("");
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e)));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="inline panel" onSubmit={submit} aria-label="Create an API key">
      <Field label="New key name" name="displayName" error={fieldError(error, "displayName") ?? fieldError(error, "display_name")}>
        {(a) => <input {...a} value={name} onInput={(e) => setName(e.currentTarget.value)} placeholder="e.g. Checkout server" />}
      </Field>
      <FormError message={formError(error, ["displayName", "display_name"])} />
      <button type="submit" disabled={busy}>
        {busy ? "Creating…" : "Create key"}
      </button>
    </form>
  );
}

function SecretOnce(props: { created: { apiKey: ApiKey; secret: string }; onDismiss: () => void }) {
  const [copied, setCopied] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(props.created.secret);
      setCopied("Copied to the clipboard.");
    } catch {
      setCopied("Copying was refused by the browser: select the secret and copy it.");
    }
  };
  return (
    <div class="panel secret" role="region" aria-label="New API key secret">
      <h2>Save this secret now</h2>
      <p>
        Key <code>{props.created.apiKey.id}</code>. The secret is shown only this once: store it somewhere safe.
      </p>
      <label for="new-secret">Secret</label>
      <div class="row">
        <input id="new-secret" readOnly value={props.created.secret} onFocus={(e) => e.currentTarget.select()} data-secret />
        <button type="button" onClick={copy}>
          Copy secret
        </button>
      </div>
      <p role="status">{copied}</p>
      <button type="button" class="secondary" onClick={props.onDismiss}>
        I have saved it
      </button>
    </div>
  );
}

function RevokeKey(props: { api: Api; apiKey: ApiKey; own: boolean; onRevoked: () => void }) {
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const revoke = async () => {
    setBusy(true);
    setError(null);
    try {
      await props.api.revokeApiKey(String(props.apiKey.id));
      props.onRevoked();
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e)));
      setBusy(false);
    }
  };
  if (!confirming) {
    return (
      <button type="button" class="secondary" onClick={() => setConfirming(true)} aria-label={`Revoke key ${props.apiKey.id}`}>
        Revoke
      </button>
    );
  }
  return (
    <div role="group" aria-label={`Confirm revoking key ${props.apiKey.id}`}>
      <p>
        Revoke <code>{props.apiKey.id}</code>? It can no longer sign in.{props.own ? " This session signed in with it." : ""}
      </p>
      <button type="button" class="danger" disabled={busy} onClick={revoke}>
        {busy ? "Revoking…" : "Yes, revoke"}
      </button>{" "}
      <button type="button" class="secondary" onClick={() => setConfirming(false)}>
        Keep it
      </button>
      <FormError message={error?.message} />
    </div>
  );
}
