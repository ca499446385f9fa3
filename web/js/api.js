import { t } from "./i18n.js";

// The console's only way to the server: same-origin fetch with the session cookie, the
// CSRF token on every state-changing request, and the API's one error envelope.
let csrfToken = null;

export function setCsrf(token) {
  csrfToken = token;
}

// Server messages the console words in the reader's language, by error code; any
// other error shows the server's own message, which names the field.
const TRANSLATED = new Set([
  "not_plain_audio", "unsupported_audio", "too_large", "malformed_json", "unauthenticated",
  "csrf", "idempotency_key_in_flight", "idempotency_key_reused", "idempotency_key_unfinished",
  "enrol_unavailable",
]);

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(TRANSLATED.has(err.code) ? t(`err.${err.code}`) : err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_error";
    this.field = err.field || null;
    // Anything else the error says (retry_after_s, why): the console words it itself.
    this.info = err;
  }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const isJson = (resp.headers.get("Content-Type") || "").includes("application/json");
  const data = isJson ? await resp.json() : await resp.text();
  if (!resp.ok) {
    const error = new ApiError(resp.status, data);
    if (resp.status === 401 && !path.startsWith("/api/session/login")) {
      window.dispatchEvent(new CustomEvent("dalaba:unauthenticated"));
    }
    throw error;
  }
  return { status: resp.status, data };
}

export const get = (path) => api("GET", path).then((r) => r.data);
export const post = (path, body) => api("POST", path, body ?? {});

// A multipart form (the browser sets its boundary) or a raw file body.
export async function upload(path, body) {
  const headers = { "X-CSRF-Token": csrfToken || "", Accept: "application/json" };
  if (!(body instanceof FormData) && body.type) headers["Content-Type"] = body.type;
  const resp = await fetch(path, { method: "POST", headers, body, credentials: "same-origin" });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// Live updates: one EventSource for the page, fanned out to whoever listens.
const listeners = new Set();
let source = null;
let onState = () => {};

export function connectLive(stateCallback) {
  onState = stateCallback || onState;
  if (source) source.close();
  source = new EventSource("/api/live");
  source.onopen = () => onState(true);
  source.onerror = () => onState(false);
  for (const kind of ["delivery", "device", "event", "broadcast", "approval", "resync", "hello"]) {
    source.addEventListener(kind, (e) => {
      let data = {};
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      for (const fn of listeners) fn(kind, data);
    });
  }
}

export function disconnectLive() {
  if (source) source.close();
  source = null;
  listeners.clear();
}

export function onLive(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}
