// Live alerts over Server-Sent Events. The session cookie authenticates
// the EventSource; on a transient drop EventSource reconnects by itself and
// resends Last-Event-ID. If the server refuses the stream (the EventSource
// closes), the session is re-checked and a new EventSource resumes with
// ?last_event_id= (an event id, nothing personal).

import { get, ApiError } from './api.js';

export const EVENT_TYPES = ['raised', 'updated', 'condition_ended', 'acknowledged', 'resolved', 'note', 'escalated'];

let es = null;
let lastId = null;
let retryTimer = null;
let retries = 0;
let handlers = null;
let stopped = true;

function setStatus(state) {
  if (handlers && handlers.onStatus) handlers.onStatus(state);
}

function open() {
  if (stopped) return;
  const url = lastId ? `/api/v1/alerts/stream?last_event_id=${encodeURIComponent(lastId)}` : '/api/v1/alerts/stream';
  setStatus(retries ? 'reconnecting' : 'connecting');
  const src = new EventSource(url, { withCredentials: false });
  es = src;
  src.onopen = () => {
    if (es !== src) return;
    retries = 0;
    setStatus('live');
  };
  src.onerror = () => {
    if (es !== src) return;
    if (src.readyState === EventSource.CLOSED) {
      src.close();
      es = null;
      scheduleReopen();
    } else {
      // EventSource is retrying by itself, with Last-Event-ID.
      setStatus('reconnecting');
    }
  };
  for (const type of EVENT_TYPES) {
    src.addEventListener(type, (ev) => {
      if (es !== src) return;
      if (ev.lastEventId) lastId = ev.lastEventId;
      let data = null;
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (handlers && handlers.onEvent) handlers.onEvent(type, data, ev.lastEventId || (data && data.event_id));
    });
  }
}

function scheduleReopen() {
  if (stopped) return;
  setStatus('reconnecting');
  retries += 1;
  const delay = Math.min(30000, 1000 * 2 ** Math.min(retries - 1, 5)) * (0.75 + Math.random() * 0.5);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(async () => {
    if (stopped) return;
    try {
      // 401 here hands over to the sign-in page (api.js onUnauthorized).
      await get('/session');
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      // Server unreachable: try again later.
      scheduleReopen();
      return;
    }
    open();
  }, delay);
}

/** Starts (or restarts) the stream. handlers: {onEvent(type, data, id), onStatus(state)}. */
export function startStream(h) {
  stopStream();
  handlers = h;
  stopped = false;
  retries = 0;
  open();
}

export function stopStream() {
  stopped = true;
  clearTimeout(retryTimer);
  if (es) es.close();
  es = null;
  lastId = null;
}

/** Reconnects at once (e.g. the browser came back online). */
export function nudgeStream() {
  if (stopped) return;
  if (!es) {
    clearTimeout(retryTimer);
    retries = 0;
    open();
  }
}
