// Hash routes (#/transactions/txn_...): every page is the one index.html the edge serves,
// and a reload never leaves the dashboard.
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { page: "transactions"; query: URLSearchParams }
  | { page: "transaction"; id: string }
  | { page: "new-transaction" }
  | { page: "api-keys" }
  | { page: "console" }
  | { page: "not-found"; path: string };

export function parse(hash: string): Route {
  const [path, search = ""] = hash.replace(/^#/, "").split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0 || (parts[0] === "transactions" && parts.length === 1)) {
    return { page: "transactions", query: new URLSearchParams(search) };
  }
  if (parts[0] === "transactions" && parts[1] === "new" && parts.length === 2) return { page: "new-transaction" };
  if (parts[0] === "transactions" && parts.length === 2) return { page: "transaction", id: parts[1] };
  if (parts[0] === "api-keys" && parts.length === 1) return { page: "api-keys" };
  if (parts[0] === "console" && parts.length === 1) return { page: "console" };
  return { page: "not-found", path };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parse(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parse(location.hash));
    addEventListener("hashchange", onChange);
    return () => removeEventListener("hashchange", onChange);
  }, []);
  return route;
}

export function navigate(hash: string): void {
  location.hash = hash;
}

export const href = {
  transactions: (query?: URLSearchParams) => `#/transactions${query && query.size ? `?${query}` : ""}`,
  transaction: (id: string) => `#/transactions/${encodeURIComponent(id)}`,
  newTransaction: () => "#/transactions/new",
  apiKeys: () => "#/api-keys",
  console: () => "#/console",
};
