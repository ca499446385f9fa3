import { hasKey, t } from "./i18n.js";

// The console's only way to the server: same-origin fetch with the session cookie, the
// CSRF token on every state-changing request, and the API's one error envelope.
let csrfToken = null;

export function setCsrf(token) {
  csrfToken = token;
}

// Every server error carries a code (controller/errors.py); the console words it in the
// reader's language (`err.<code>`, with the error's params and the field's label), and
// shows the server's own sentence only for a code it does not know yet.
// tests/unit/test_message_catalogue.py keeps the catalogue complete.
export function errorText(err, status) {
  if (err.code && hasKey(`err.${err.code}`)) {
    const field = err.field ? (hasKey(`field.${err.field}`) ? t(`field.${err.field}`) : err.field) : "";
    return t(`err.${err.code}`, { why: "", ...(err.params || {}), field, message: err.message || "" });
  }
  return err.message || `HTTP ${status}`;
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(errorText(err, status));
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
