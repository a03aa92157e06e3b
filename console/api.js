// The public Daypass API as the console uses it: GraphQL over HTTP (POST /graphql)
// and its connections page by page, the balanceChanged subscription over WebSocket
// (graphql-transport-ws), the usage CSV, and one place that turns an error into
// words a person understands.

/** An API failure with a message for people and the details for the curious. */
export class ApiError extends Error {
  constructor(message, { code = null, reason = null, requestId = null, detail = null } = {}) {
    super(message);
    this.code = code;
    this.reason = reason;
    this.requestId = requestId;
    this.detail = detail;
  }
}

/** Words for an error's `extensions` (the contract's codes) and its server message. */
export function explain(code, serverMessage, ext = {}) {
  const msg = (serverMessage || "").replace(/^(forbidden|not found|conflict): /, "").replace(/\.$/, "");
  switch (code) {
    case "UNAUTHENTICATED":
      return "This API key was not recognised. Check that you pasted the whole key, or ask an admin for a new one.";
    case "FORBIDDEN":
      if (ext.reason === "RATE_LIMITED") {
        const s = ext.retryAfterSeconds;
        return `Too many changes in a short time. Wait ${s ? `${s} second${s === 1 ? "" : "s"}` : "a moment"} and try again.`;
      }
      if (/deactivated/.test(msg)) return "This user has been deactivated, so the key can no longer be used.";
      return `Not allowed: ${msg}.`;
    case "NOT_FOUND":
      return `That no longer exists (${msg}). Reload the page to see the current state.`;
    case "BAD_USER_INPUT":
      return `Daypass did not accept this: ${msg}.`;
    case "CONFLICT":
      return `This conflicts with an earlier request: ${msg}.`;
    case "INTERNAL":
      return "Daypass had an internal problem and did nothing. Try again; if it happens again, give your operator the request id below.";
    default:
      return msg ? `The request failed: ${msg}.` : "The request failed.";
  }
}

function errorFrom(first, status) {
  const ext = first?.extensions || {};
  const code = ext.code || (status === 401 ? "UNAUTHENTICATED" : null);
  return new ApiError(explain(code, first?.message, ext), {
    code,
    reason: ext.reason || null,
    requestId: ext.requestId || null,
    detail: first?.message || null,
  });
}

/** Every page of a connection: `fetchPage(after)` returns the connection. */
export async function allPages(fetchPage) {
  const nodes = [];
  let after = null;
  for (let i = 0; i < 100; i += 1) {
    const conn = await fetchPage(after);
    nodes.push(...conn.edges.map((e) => e.node));
    if (!conn.pageInfo.hasNextPage) break;
    after = conn.pageInfo.endCursor;
  }
  return nodes;
}

/** The `account` of an answer; null means the operator's chosen account is gone. */
export function accountOf(data) {
  if (!data.account) throw new ApiError("That account does not exist (any more). Choose another one.", { code: "NOT_FOUND" });
  return data.account;
}

const NETWORK_ERROR = "Daypass could not be reached. Check your network connection and that the server is running, then try again.";

export class Api {
  constructor(key, { onUnauthenticated } = {}) {
    this.key = key;
    this.onUnauthenticated = onUnauthenticated;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.key}`, ...extra };
  }

  /** Runs a GraphQL document; returns `data` or throws an ApiError. */
  async gql(query, variables = {}) {
    let resp;
    try {
      resp = await fetch("/graphql", {
        method: "POST",
        headers: this.headers({ "Content-Type": "application/json", Accept: "application/json" }),
        body: JSON.stringify({ query, variables }),
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(NETWORK_ERROR, { detail: String(e) });
    }
    let body = null;
    try {
      body = await resp.json();
    } catch {
      throw new ApiError(
        resp.status === 413 ? "The request was too large for Daypass." : `Daypass answered with HTTP ${resp.status} and no readable body.`,
        { requestId: resp.headers.get("x-request-id") },
      );
    }
    if (body.errors && body.errors.length) {
      const err = errorFrom(body.errors[0], resp.status);
      if (err.code === "UNAUTHENTICATED" && this.onUnauthenticated) this.onUnauthenticated(err);
      throw err;
    }
    return body.data;
  }

  /** The usage CSV for a range; returns a Blob (text/csv). */
  async usageCsv(params) {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== ""));
    let resp;
    try {
      resp = await fetch(`/reports/usage.csv?${q}`, { headers: this.headers(), cache: "no-store" });
    } catch (e) {
      throw new ApiError(NETWORK_ERROR, { detail: String(e) });
    }
    if (!resp.ok) {
      let body = null;
      try { body = await resp.json(); } catch { /* not JSON */ }
      throw errorFrom(body?.errors?.[0], resp.status);
    }
    return resp.blob();
  }
}

/**
 * One subscription over /graphql/ws with the graphql-transport-ws protocol. The key
 * goes in the connection_init payload (browsers cannot set headers on a WebSocket).
 * Reconnects with backoff; `onState` hears "connecting", "live", "offline" and
 * "refused", and `onReconnect` runs when a dropped connection is back (pushes may
 * have been missed meanwhile).
 */
export class LiveSubscription {
  constructor({ key, query, variables, onData, onError, onState, onReconnect }) {
    Object.assign(this, { key, query, variables, onData, onError, onState, onReconnect });
    this.closed = false;
    this.attempt = 0;
    this.everLive = false;
    this.connect();
  }

  connect() {
    if (this.closed) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.onState?.("connecting");
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/graphql/ws`, "graphql-transport-ws");
    } catch (e) {
      this.onError?.(new ApiError(NETWORK_ERROR, { detail: String(e) }));
      this.retry();
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "connection_init", payload: { Authorization: `Bearer ${this.key}` } }));
    });
    ws.addEventListener("message", (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      switch (msg.type) {
        case "connection_ack":
          ws.send(JSON.stringify({ id: "balance", type: "subscribe", payload: { query: this.query, variables: this.variables } }));
          this.attempt = 0;
          this.onState?.("live");
          if (this.everLive) this.onReconnect?.();
          this.everLive = true;
          break;
        case "next":
          if (msg.payload?.errors?.length) this.onError?.(errorFrom(msg.payload.errors[0]));
          else this.onData?.(msg.payload.data);
          break;
        case "error":
          this.onError?.(errorFrom(Array.isArray(msg.payload) ? msg.payload[0] : msg.payload));
          break;
        case "ping":
          ws.send(JSON.stringify({ type: "pong" }));
          break;
        default:
          break;
      }
    });
    ws.addEventListener("close", (ev) => {
      if (this.closed) return;
      if (/^UNAUTHENTICATED/.test(ev.reason || "")) {
        this.onState?.("refused");
        this.onError?.(new ApiError(explain("UNAUTHENTICATED"), { code: "UNAUTHENTICATED" }));
        return;
      }
      this.onState?.("offline");
      this.retry();
    });
  }

  retry() {
    if (this.closed) return;
    const delay = Math.min(30000, 1000 * 2 ** this.attempt) * (0.75 + Math.random() / 2);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws && this.ws.readyState <= 1) {
      try { this.ws.send(JSON.stringify({ id: "balance", type: "complete" })); } catch { /* closing anyway */ }
      this.ws.close(1000, "signed out");
    }
  }
}
