// In-memory alert store shared by the queue, the detail page and the live
// stream. Nothing is persisted: no localStorage, no sessionStorage.

import { STATUS_RANK } from './dom.js';

export const alerts = new Map(); // alert_id -> summary
const caseRefs = new Map(); // supervisee_id -> case_ref (from listed alerts)
const listeners = new Set();
const seenEvents = new Set();
/** Alerts resolved while this page held them as open/acknowledged. */
export const resolvedHere = new Set();
let seenOrder = [];
let loaded = false;
let pending = [];

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(change) {
  for (const fn of [...listeners]) {
    try {
      fn(change);
    } catch (e) {
      console.error(e); // eslint-disable-line no-console
    }
  }
}

function later(a, b) {
  if (!a) return b;
  if (!b) return a;
  return new Date(a) >= new Date(b) ? a : b;
}

/**
 * Merges a newer view of an alert into the one held. Status only moves
 * forward (open → acknowledged → resolved), so an event replayed after a
 * fresher list cannot undo a decision on screen.
 */
function merge(old, inc) {
  if (!old) {
    const out = { ...inc };
    if (!out.case_ref && out.supervisee_id !== null && out.supervisee_id !== undefined) out.case_ref = caseRefs.get(out.supervisee_id) || null;
    return out;
  }
  if (old.status !== 'resolved' && inc.status === 'resolved') resolvedHere.add(old.alert_id);
  const out = { ...old };
  for (const [k, v] of Object.entries(inc)) {
    if (v === undefined) continue;
    if (v === null && old[k] !== null && old[k] !== undefined && k !== 'condition_ended_at') continue;
    out[k] = v;
  }
  if ((STATUS_RANK[old.status] ?? 0) > (STATUS_RANK[inc.status] ?? 0)) out.status = old.status;
  out.evidence_count = Math.max(old.evidence_count || 0, inc.evidence_count || 0);
  out.last_evidence_at = later(old.last_evidence_at, inc.last_evidence_at);
  out.escalated_at = inc.escalated_at || old.escalated_at || null;
  out.condition_ended_at = inc.condition_ended_at || old.condition_ended_at || null;
  if (!out.case_ref && out.supervisee_id !== null && out.supervisee_id !== undefined) out.case_ref = caseRefs.get(out.supervisee_id) || null;
  return out;
}

function remember(a) {
  if (a.case_ref && a.supervisee_id !== null && a.supervisee_id !== undefined) caseRefs.set(a.supervisee_id, a.case_ref);
}

/** Adds or refreshes alerts from a list or detail response. */
export function upsertMany(list, { silent = false } = {}) {
  const changed = [];
  for (const a of list) {
    if (!a || a.alert_id === undefined) continue;
    remember(a);
    const merged = merge(alerts.get(a.alert_id), a);
    alerts.set(a.alert_id, merged);
    changed.push(merged.alert_id);
  }
  if (!silent && changed.length) emit({ type: 'list', ids: changed });
}

/** Marks the initial queue as loaded and applies events that came first. */
export function markLoaded() {
  loaded = true;
  const q = pending;
  pending = [];
  for (const [type, data, id] of q) applyEvent(type, data, id);
}

export function isLoaded() {
  return loaded;
}

/**
 * Applies one live-stream event. Events are deduplicated by their id (the
 * alert-event log position): a replay after a reconnect changes nothing twice.
 */
export function applyEvent(type, data, eventId) {
  if (!loaded) {
    // Held until the queue is loaded (then deduplicated like any other).
    pending.push([type, data, eventId]);
    return;
  }
  const key = String(eventId || (data && data.event_id) || '');
  if (key) {
    if (seenEvents.has(key)) return;
    seenEvents.add(key);
    seenOrder.push(key);
    if (seenOrder.length > 5000) {
      for (const k of seenOrder.slice(0, 1000)) seenEvents.delete(k);
      seenOrder = seenOrder.slice(1000);
    }
  }
  const id = Number((data && data.alert_id) ?? (data && data.alert && data.alert.alert_id));
  if (!Number.isFinite(id)) return;
  const inc = { ...((data && data.alert) || {}), alert_id: id };
  const existed = alerts.has(id);
  const merged = merge(alerts.get(id), inc);
  alerts.set(id, merged);
  emit({ type: 'event', eventType: type, id, isNew: !existed, alert: merged, at: data && data.at });
}

/** Forgets everything (sign-out). */
export function reset() {
  alerts.clear();
  caseRefs.clear();
  resolvedHere.clear();
  seenEvents.clear();
  seenOrder = [];
  loaded = false;
  pending = [];
  emit({ type: 'reset' });
}
