// DOM and formatting helpers. Nothing here ever parses HTML: every piece of
// text from the API goes into the page through text nodes / textContent.

/**
 * Creates an element. `attrs` keys:
 *   class, id, text (textContent), for, hidden, disabled, ... (properties),
 *   dataset: {k: v}, aria-* / role / other strings (setAttribute),
 *   on: {event: handler}.
 * Children: nodes, strings (as text), arrays, null/undefined/false (skipped).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'for') el.htmlFor = v;
      else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else if (k === 'style') throw new Error('use CSS classes, not inline styles');
      else if (k in PROPS) el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

const PROPS = {
  value: 1, checked: 1, disabled: 1, hidden: 1, required: 1, type: 1, name: 1,
  placeholder: 1, min: 1, max: 1, step: 1, rows: 1, href: 1, tabIndex: 1,
  selected: 1, multiple: 1, accept: 1, autocomplete: 1, title: 1, colSpan: 1, readOnly: 1,
  maxLength: 1, spellcheck: 1,
};

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function $(sel, root = document) {
  return root.querySelector(sel);
}

/** Announces a message to screen readers through the polite live region. */
export function announce(msg) {
  const el = document.getElementById('announcer');
  if (!el) return;
  // Re-setting the same text is not re-announced; clear first.
  el.textContent = '';
  window.setTimeout(() => { el.textContent = msg; }, 50);
}

// ---------- labels ----------

const KIND_LABELS = {
  exclusion_zone_entry: 'Exclusion zone entry',
  inclusion_zone_exit: 'Inclusion zone exit',
  curfew_violation: 'Curfew violation',
  strap_tamper: 'Strap tamper',
  body_contact_lost: 'Body contact lost',
  battery_low: 'Battery low',
  battery_critical: 'Battery critical',
  no_signal: 'No signal',
  gps_loss: 'GPS loss',
  victim_proximity: 'Victim proximity',
};
export function kindLabel(k) {
  return KIND_LABELS[k] || humanize(k);
}

export const OUTCOMES = [
  ['contacted_supervisee', 'Contacted supervisee'],
  ['equipment_fault', 'Equipment fault'],
  ['gps_false_alarm', 'GPS false alarm'],
  ['approved_absence', 'Approved absence'],
  ['referred_for_review', 'Referred for review'],
  ['no_action_needed', 'No action needed'],
];
export function outcomeLabel(o) {
  const hit = OUTCOMES.find(([k]) => k === o);
  return hit ? hit[1] : humanize(o);
}

export const SEVERITIES = ['critical', 'high', 'medium', 'low'];
export function severityRank(s) {
  const i = SEVERITIES.indexOf(s);
  return i < 0 ? SEVERITIES.length : i;
}
export const STATUS_RANK = { open: 0, acknowledged: 1, resolved: 2 };

export function humanize(s) {
  if (s === null || s === undefined) return '';
  const t = String(s).replace(/_/g, ' ');
  return t.charAt(0).toUpperCase() + t.slice(1);
}

/** A badge; shows the API's own word (CSS capitalises it) unless a label is given. */
export function badge(kind, value, label) {
  const v = value === null || value === undefined ? '' : String(value);
  return h('span', { class: `badge badge-${kind} badge-${kind}-${v.replace(/[^a-z0-9_-]/gi, '')}`, text: label || v.replace(/_/g, ' ') });
}

// ---------- time ----------

const LOCAL_TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
export function localTimeZone() {
  return LOCAL_TZ;
}

const fmtCache = new Map();
function dtf(key, opts) {
  let f = fmtCache.get(key);
  if (!f) {
    try {
      f = new Intl.DateTimeFormat(undefined, opts);
    } catch (_) {
      // Unknown time zone name: fall back to UTC rather than failing the page.
      f = new Intl.DateTimeFormat(undefined, { ...opts, timeZone: 'UTC' });
    }
    fmtCache.set(key, f);
  }
  return f;
}

export function toDate(v) {
  if (v instanceof Date) return v;
  if (v === null || v === undefined || v === '') return null;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "Tue 4 Nov, 21:14:05" in the browser's time zone. */
export function fmtLocal(v, { seconds = false, date = true } = {}) {
  const d = toDate(v);
  if (!d) return '—';
  const key = `l|${seconds}|${date}`;
  const opts = { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' };
  if (seconds) opts.second = '2-digit';
  if (date) Object.assign(opts, { weekday: 'short', day: 'numeric', month: 'short' });
  return dtf(key, opts).format(d);
}

/** Wall-clock time of `v` in zone `tz`. */
export function fmtInZone(v, tz, { seconds = false, date = true } = {}) {
  const d = toDate(v);
  if (!d) return '—';
  const key = `z|${tz}|${seconds}|${date}`;
  const opts = { hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZone: tz };
  if (seconds) opts.second = '2-digit';
  if (date) Object.assign(opts, { weekday: 'short', day: 'numeric', month: 'short' });
  return dtf(key, opts).format(d);
}

/** "Tuesday 4 November" in zone `tz`. */
export function fmtDateInZone(v, tz) {
  const d = toDate(v);
  if (!d) return '—';
  return dtf(`d|${tz}`, { timeZone: tz, weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' }).format(d);
}

/** Offset of `tz` from UTC at instant `d`, in minutes. */
export function tzOffsetMinutes(d, tz) {
  const f = dtf(`off|${tz}`, {
    timeZone: tz, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
    hour: 'numeric', minute: 'numeric', second: 'numeric',
  });
  const p = {};
  for (const part of f.formatToParts(d)) p[part.type] = part.value;
  const asUtc = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
  return Math.round((asUtc - Math.floor(d.getTime() / 1000) * 1000) / 60000);
}

/**
 * Local time, plus the supervisee's wall-clock time when their zone differs
 * from the browser's at that instant: "Tue 4 Nov, 21:14 (20:14 Europe/London)".
 */
export function fmtTime(v, tz, opts = {}) {
  const d = toDate(v);
  if (!d) return '—';
  const local = fmtLocal(d, opts);
  if (!tz || tz === LOCAL_TZ) return local;
  let differs = true;
  try {
    differs = tzOffsetMinutes(d, tz) !== tzOffsetMinutes(d, LOCAL_TZ);
  } catch (_) { /* keep differs */ }
  if (!differs) return `${local} (same in ${tz})`;
  return `${local} (${fmtInZone(d, tz, { ...opts, date: false })} ${tz})`;
}

/** Creates a <time> element with machine-readable datetime and the formatted text. */
export function timeEl(v, tz, opts) {
  const d = toDate(v);
  const el = h('time', { text: fmtTime(v, tz, opts) });
  if (d) {
    el.setAttribute('datetime', d.toISOString());
    el.title = d.toISOString();
  }
  return el;
}

export function fmtAgo(v, now = Date.now()) {
  const d = toDate(v);
  if (!d) return '';
  const s = Math.round((now - d.getTime()) / 1000);
  return fmtDuration(s, true);
}

export function fmtDuration(sec, ago = false) {
  if (sec === null || sec === undefined || Number.isNaN(sec)) return '';
  const neg = sec < 0;
  let s = Math.abs(sec);
  let out;
  if (s < 45) out = `${s} s`;
  else if (s < 90 * 60) out = `${Math.round(s / 60)} min`;
  else if (s < 36 * 3600) {
    const hrs = Math.floor(s / 3600);
    const m = Math.round((s - hrs * 3600) / 60);
    out = m ? `${hrs} h ${m} min` : `${hrs} h`;
  } else out = `${Math.round(s / 86400)} days`;
  if (!ago) return out;
  return neg ? `in ${out}` : `${out} ago`;
}

/** Value for <input type="datetime-local"> from a Date (browser local time). */
export function toLocalInput(d) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Date from an <input type="datetime-local"> value (browser local time), or null. */
export function fromLocalInput(s) {
  if (!s) return null;
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(s);
  if (!m) return null;
  const d = new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
  return Number.isNaN(d.getTime()) ? null : d;
}

export function fmtMetres(m) {
  if (m === null || m === undefined || Number.isNaN(+m)) return '—';
  const v = +m;
  if (Math.abs(v) >= 1000) return `${(v / 1000).toFixed(1)} km`;
  return `${Math.round(v)} m`;
}

export function fmtCoord(v) {
  if (v === null || v === undefined) return '—';
  return (+v).toFixed(5);
}

/** A visually hidden span (for screen readers). */
export function srOnly(text) {
  return h('span', { class: 'sr-only', text });
}
