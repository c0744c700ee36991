// The API console: Swagger UI over the served /openapi.json. Its files are part of the
// build (same origin, no CDN); it is loaded only when this page is opened. "Try it" goes
// through the edge with this session's token, which Swagger UI never stores.
import { useEffect, useRef, useState } from "preact/hooks";
import bundleUrl from "swagger-ui-dist/swagger-ui-bundle.js?url";
import cssUrl from "swagger-ui-dist/swagger-ui.css?url";

type SwaggerRequest = { url: string; headers: Record<string, string> };
type SwaggerUIBundle = (options: Record<string, unknown>) => unknown;

let loading: Promise<SwaggerUIBundle> | null = null;

function loadSwaggerUi(): Promise<SwaggerUIBundle> {
  loading ??= new Promise((resolve, reject) => {
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = cssUrl;
    document.head.append(css);
    const script = document.createElement("script");
    script.src = bundleUrl;
    script.onload = () => resolve((window as unknown as { SwaggerUIBundle: SwaggerUIBundle }).SwaggerUIBundle);
    script.onerror = () => {
      loading = null;
      reject(new Error("the console's script could not be loaded"));
    };
    document.head.append(script);
  });
  return loading;
}

/** The document lists https first; requests keep this page's own scheme, host and port. */
export function sameOrigin(url: string): string {
  const target = new URL(url, location.href);
  return `${location.origin}${target.pathname}${target.search}`;
}

export function ConsolePage(props: { token: string }) {
  const node = useRef<HTMLDivElement>(null);
  const token = useRef(props.token);
  token.current = props.token;
  const [state, setState] = useState<"loading" | "ready" | string>("loading");

  useEffect(() => {
    let live = true;
    loadSwaggerUi()
      .then((SwaggerUI) => {
        if (!live || !node.current) return;
        SwaggerUI({
          domNode: node.current,
          url: "/openapi.json",
          validatorUrl: null,
          deepLinking: false,
          persistAuthorization: false,
          tryItOutEnabled: true,
          displayRequestDuration: true,
          requestInterceptor: (request: SwaggerRequest) => {
            request.url = sameOrigin(request.url);
            if (!request.headers.Authorization && !request.headers.authorization) {
              request.headers.Authorization = `Bearer ${token.current}`;
            }
            return request;
          },
          onComplete: () => live && setState("ready"),
        });
      })
      .catch((e) => live && setState(String(e)));
    return () => {
      live = false;
    };
  }, []);

  return (
    <section aria-labelledby="console-title" class="console">
      <h1 id="console-title">API console</h1>
      <p>
        Every operation of <a href="/openapi.json">/openapi.json</a>. "Try it out" sends a real request through the edge, signed with this session's
        token: it acts on your live data.
      </p>
      {state === "loading" && <p role="status">Loading the console…</p>}
      {state !== "loading" && state !== "ready" && (
        <p class="error" role="alert">
          {state}
        </p>
      )}
      <div ref={node} data-console />
    </section>
  );
}
