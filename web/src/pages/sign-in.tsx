import { useState } from "preact/hooks";
import { ApiError, type Api, type Session } from "../api/client";
import { Field, FormError } from "../components";

export function SignIn(props: { api: Api; notice: string; onSignedIn: (session: Session) => void }) {
  const [keyId, setKeyId] = useState("");
  const [secret, setSecret] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);

  const submit = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      props.onSignedIn(await props.api.signIn(keyId.trim(), secret.trim()));
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, String(e)));
      setBusy(false);
    }
  };

  return (
    <main class="sign-in">
      <h1>Sign in to Pi Platform</h1>
      <p>Use an API key id and its secret. The session lives in this tab only; closing or reloading it signs you out.</p>
      {props.notice && (
        <p class="notice" role="status">
          {props.notice}
        </p>
      )}
      <form onSubmit={submit} aria-label="Sign in">
        <Field label="API key id" name="apiKeyId">
          {(a) => (
            <input {...a} value={keyId} onInput={(e) => setKeyId(e.currentTarget.value)} required autoComplete="username" placeholder="key_..." />
          )}
        </Field>
        <Field label="API key secret" name="apiKeySecret">
          {(a) => (
            <input
              {...a}
              type="password"
              value={secret}
              onInput={(e) => setSecret(e.currentTarget.value)}
              required
              autoComplete="current-password"
              placeholder="sk_..."
            />
          )}
        </Field>
        <FormError message={error ? (error.status === 401 || error.status === 400 ? `Sign-in failed: ${error.message}` : error.message) : undefined} />
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </main>
  );
}
