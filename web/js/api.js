// Same-origin API client. The session is an HttpOnly cookie set by
// POST /api/v1/session; this module never sees or stores a token.

const BASE = '/api/v1';

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
  /** Field errors `[{field, message}]` of a validation problem. */
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

let unauthorizedHandler = () => {};

/** Called (once per burst) when any request answers 401. */
export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

function buildUrl(path, query) {
  let url = BASE + path;
  if (query) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === '') continue;
      qs.set(k, String(v));
    }
    const s = qs.toString();
    if (s) url += `?${s}`;
  }
  return url;
}

/**
 * Calls the API. Options: body (JSON-serialised), query (object), reason
 * (X-Audit-Reason), signal, allow401 (do not treat 401 as "signed out").
 * Resolves with the parsed JSON (null for 204); rejects with ApiError.
 */
export async function api(method, path, opts = {}) {
  const { body, query, reason, signal, allow401 = false } = opts;
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-Requested-With'] = 'waypoint';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (reason) headers['X-Audit-Reason'] = String(reason).slice(0, 500);
  let res;
  try {
    res = await fetch(buildUrl(path, query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      // Personal and location data must not linger in the HTTP cache.
      cache: 'no-store',
      signal,
    });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, { title: 'Network error', detail: 'The server could not be reached. Check the connection and try again.' });
  }
  if (res.status === 204) return null;
  const ct = res.headers.get('Content-Type') || '';
  let data = null;
  if (ct.includes('json')) {
    try {
      data = await res.json();
    } catch (_) {
      data = null;
    }
  }
  if (!res.ok) {
    const problem = data && typeof data === 'object' ? data : { title: res.statusText || `HTTP ${res.status}`, status: res.status };
    if (res.status === 503 && !problem.detail) {
      const ra = res.headers.get('Retry-After');
      problem.detail = `The service is temporarily unavailable${ra ? `; retry in ${ra} s` : ''}.`;
    }
    const err = new ApiError(res.status, problem);
    if (res.status === 401 && !allow401) unauthorizedHandler(err);
    throw err;
  }
  return data;
}

export const get = (path, opts) => api('GET', path, opts);
export const post = (path, body, opts = {}) => api('POST', path, { ...opts, body });
export const put = (path, body, opts = {}) => api('PUT', path, { ...opts, body });
export const patch = (path, body, opts = {}) => api('PATCH', path, { ...opts, body });
export const del = (path, opts) => api('DELETE', path, opts);

/** Follows `next_cursor` until `max` items or the last page. */
export async function getAll(path, query = {}, max = 1000, opts = {}) {
  const items = [];
  let cursor;
  for (;;) {
    const page = await get(path, { ...opts, query: { ...query, cursor, limit: Math.min(200, max - items.length) } });
    items.push(...(page.items || []));
    cursor = page.next_cursor;
    if (!cursor || items.length >= max) return { items, more: Boolean(cursor) };
  }
}

/** Human text for an error (for places without a form). */
export function errorText(err) {
  if (!(err instanceof ApiError)) return String((err && err.message) || err);
  const p = err.problem;
  let s = p.title || `HTTP ${err.status}`;
  if (p.detail && p.detail !== p.title) s += `: ${p.detail}`;
  if (err.status === 404) s = 'Not found, or not in your caseload.';
  if (err.status === 403) s = 'Your role may not do this.';
  if (p.error_id) s += ` (error id ${p.error_id})`;
  return s;
}
