// The shell: the session (in memory only), the navigation and the page for the route.
//
// The access token lives in this module's state and nowhere else: not localStorage, not
// sessionStorage, not a cookie. A reload signs the merchant out, by design. When the token
// expires, or the API answers 401, the merchant is asked to sign in again.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { Api, type Session } from "./api/client";
import { ApiKeysPage } from "./pages/api-keys";
import { ConsolePage } from "./pages/console";
import { NewTransactionPage } from "./pages/new-transaction";
import { SignIn } from "./pages/sign-in";
import { TransactionPage } from "./pages/transaction";
import { TransactionsPage } from "./pages/transactions";
import { href, useRoute, type Route } from "./router";

export function App() {
  const [session, setSession] = useState<Session | null>(null);
  const [notice, setNotice] = useState("");
  const sessionRef = useRef<Session | null>(null);
  sessionRef.current = session;

  const endSession = (message: string) => {
    sessionRef.current = null;
    setSession(null);
    setNotice(message);
  };
  const api = useMemo(
    () =>
      new Api(
        () => sessionRef.current?.token ?? null,
        () => endSession("Your session has ended (the token expired or was revoked). Sign in again."),
      ),
    [],
  );

  useEffect(() => {
    if (!session) return;
    const timer = setTimeout(
      () => endSession("Your session expired. Sign in again."),
      Math.max(0, session.expiresAt - Date.now()),
    );
    return () => clearTimeout(timer);
  }, [session]);

  const signOut = async () => {
    const current = sessionRef.current;
    endSession("You are signed out.");
    if (current) {
      // Revoke the token so a copy of it is useless too; signed out either way.
      await api.signOut(current).catch(() => undefined);
    }
  };

  if (!session) {
    return (
      <SignIn
        api={api}
        notice={notice}
        onSignedIn={(s) => {
          setNotice("");
          setSession(s);
        }}
      />
    );
  }
  return <Shell api={api} session={session} onSignOut={signOut} />;
}

function Shell(props: { api: Api; session: Session; onSignOut: () => void }) {
  const route = useRoute();
  const main = useRef<HTMLElement>(null);
  useEffect(() => {
    // Keyboard and screen-reader users land on the new page's content.
    main.current?.focus();
  }, [route.page, route.page === "transaction" ? route.id : ""]);
  const current = (page: Route["page"]) => (route.page === page ? "page" : undefined);
  return (
    <div class="shell">
      <a class="skip" href="#main" onClick={(e) => (e.preventDefault(), main.current?.focus())}>
        Skip to content
      </a>
      <header class="top">
        <span class="brand">Pi Platform</span>
        <nav aria-label="Main">
          <a href={href.transactions()} aria-current={current("transactions") ?? current("transaction")}>
            Transactions
          </a>
          <a href={href.newTransaction()} aria-current={current("new-transaction")}>
            New transaction
          </a>
          <a href={href.apiKeys()} aria-current={current("api-keys")}>
            API keys
          </a>
          <a href={href.console()} aria-current={current("console")}>
            API console
          </a>
        </nav>
        <span class="who" title="The API key this session signed in with">
          {props.session.keyId}
        </span>
        <button type="button" class="secondary" onClick={props.onSignOut}>
          Sign out
        </button>
      </header>
      <main id="main" ref={main} tabIndex={-1}>
        <Page route={route} api={props.api} session={props.session} />
      </main>
    </div>
  );
}

function Page(props: { route: Route; api: Api; session: Session }) {
  const { route, api } = props;
  switch (route.page) {
    case "transactions":
      return <TransactionsPage api={api} query={route.query} />;
    case "transaction":
      return <TransactionPage key={route.id} api={api} id={route.id} />;
    case "new-transaction":
      return <NewTransactionPage api={api} />;
    case "api-keys":
      return <ApiKeysPage api={api} session={props.session} />;
    case "console":
      return <ConsolePage token={props.session.token} />;
    default:
      return (
        <section>
          <h1>Page not found</h1>
          <p>
            Nothing lives at <code>{route.path}</code>. <a href={href.transactions()}>Back to transactions</a>.
          </p>
        </section>
      );
  }
}
