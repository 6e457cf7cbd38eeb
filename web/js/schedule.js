// Weekly schedules ({"windows": [{"days": ["mon", ...], "start": "HH:MM",
// "end": "HH:MM"}]}) evaluated in the supervisee's IANA time zone, as the
// server does: a window may cross midnight (end before start), "24:00" is
// the end of the start day.

import { tzOffsetMinutes } from './dom.js';

export const DAY_NAMES = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
export const DAY_LABELS = { mon: 'Mon', tue: 'Tue', wed: 'Wed', thu: 'Thu', fri: 'Fri', sat: 'Sat', sun: 'Sun' };

/** The calendar date of instant `d` in zone `tz`: {y, m, d}. */
export function dateInZone(d, tz) {
  const f = new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: 'numeric', day: 'numeric' });
  const p = {};
  for (const part of f.formatToParts(d)) p[part.type] = part.value;
  return { y: +p.year, m: +p.month, d: +p.day };
}

function addDays({ y, m, d }, n) {
  const t = new Date(Date.UTC(y, m - 1, d + n));
  return { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate() };
}

function weekdayName({ y, m, d }) {
  // getUTCDay: 0 = Sunday.
  return DAY_NAMES[(new Date(Date.UTC(y, m - 1, d)).getUTCDay() + 6) % 7];
}

function parseHm(s) {
  const m = /^(\d{2}):(\d{2})$/.exec(String(s || ''));
  if (!m) return null;
  const hh = +m[1];
  const mm = +m[2];
  if (hh === 24 && mm === 0) return 24 * 60;
  if (hh > 23 || mm > 59) return null;
  return hh * 60 + mm;
}

/** The instant at which wall-clock `minutes` after midnight of `date` occurs in `tz`. */
export function zonedToInstant(date, minutes, tz) {
  const guess = Date.UTC(date.y, date.m - 1, date.d, 0, minutes);
  const off1 = tzOffsetMinutes(new Date(guess), tz);
  let t = guess - off1 * 60000;
  const off2 = tzOffsetMinutes(new Date(t), tz);
  if (off2 !== off1) t = guess - off2 * 60000;
  return new Date(t);
}

/**
 * One occurrence of window `w` starting on local date `date`: {start, end}
 * as Dates, or null for an invalid window.
 */
function occurrence(w, date, tz) {
  const s = parseHm(w.start);
  const e = parseHm(w.end);
  if (s === null || e === null || s === 24 * 60) return null;
  const start = zonedToInstant(date, s, tz);
  let end;
  if (e === 24 * 60) end = zonedToInstant(addDays(date, 1), 0, tz);
  else if (e <= s) end = zonedToInstant(addDays(date, 1), e, tz);
  else end = zonedToInstant(date, e, tz);
  return { start, end };
}

/**
 * Windows of today's local date in `tz`: those starting today, and those
 * that started yesterday and run past midnight into today. Rules without a
 * schedule apply all day. Returns [{rule, window, start, end, always, fromYesterday}],
 * ordered by start.
 */
export function todaysWindows(rules, tz, now = new Date()) {
  const today = dateInZone(now, tz);
  const yesterday = addDays(today, -1);
  const todayName = weekdayName(today);
  const yName = weekdayName(yesterday);
  const todayStart = zonedToInstant(today, 0, tz);
  const out = [];
  for (const rule of rules) {
    if (rule.retired) continue;
    const windows = rule.schedule && Array.isArray(rule.schedule.windows) ? rule.schedule.windows : null;
    if (!windows) {
      out.push({ rule, window: null, start: todayStart, end: zonedToInstant(addDays(today, 1), 0, tz), always: true, fromYesterday: false });
      continue;
    }
    for (const w of windows) {
      const days = Array.isArray(w.days) ? w.days : [];
      if (days.includes(yName)) {
        const occ = occurrence(w, yesterday, tz);
        if (occ && occ.end > todayStart) out.push({ rule, window: w, ...occ, always: false, fromYesterday: true });
      }
      if (days.includes(todayName)) {
        const occ = occurrence(w, today, tz);
        if (occ) out.push({ rule, window: w, ...occ, always: false, fromYesterday: false });
      }
    }
  }
  out.sort((a, b) => a.start - b.start);
  return { date: today, weekday: todayName, windows: out };
}

/** Exceptions (approved absences) that overlap [start, end) for a rule. */
export function coveringExceptions(exceptions, ruleId, start, end) {
  return exceptions.filter((x) => {
    if (x.status === 'cancelled') return false;
    if (x.rule_id !== null && x.rule_id !== undefined && x.rule_id !== ruleId) return false;
    const s = new Date(x.starts_at);
    const e = new Date(x.ends_at);
    return s < end && e > start;
  });
}

/** Validates a schedule object the way the server will; returns an error message or null. */
export function scheduleProblem(sch) {
  if (sch === null) return null;
  if (typeof sch !== 'object' || Array.isArray(sch) || !Array.isArray(sch.windows)) return 'must be {"windows": [...]}';
  for (const [i, w] of sch.windows.entries()) {
    if (!w || !Array.isArray(w.days) || w.days.length === 0 || w.days.length > 7) return `window ${i}: days must list 1 to 7 days`;
    for (const d of w.days) if (!DAY_NAMES.includes(d)) return `window ${i}: unknown day ${JSON.stringify(d)} (mon … sun)`;
    const s = parseHm(w.start);
    const e = parseHm(w.end);
    if (s === null || s === 24 * 60) return `window ${i}: start must be HH:MM`;
    if (e === null) return `window ${i}: end must be HH:MM (00:00 to 24:00)`;
    if (s === e) return `window ${i} starts and ends at the same time`;
  }
  return null;
}

/** "Mon–Fri 21:00–07:00 (next day)" */
export function describeWindow(w) {
  const days = (w.days || []).map((d) => DAY_LABELS[d] || d).join(', ');
  const s = parseHm(w.start);
  const e = parseHm(w.end);
  const crosses = s !== null && e !== null && e !== 24 * 60 && e <= s;
  return `${days} ${w.start}–${w.end}${crosses ? ' (next day)' : ''}`;
}
