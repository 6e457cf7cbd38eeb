// End-to-end test of the officer dashboard in real headless Chromium.
//
// Driven by tests/dashboard.rs, which starts the server, makes the tokens
// and raises the alert. Protocol on stdout, one line each:
//   READY           signed in as the officer, queue shown, live stream open
//                   (the Rust side raises an alert after this)
//   DONE <alert_id> every step and every check passed (exit 0)
//   FAIL ...        exit 1. Defects the run can go past are collected and
//                   listed at the end ("FAIL problem: [step] ..."), so one
//                   run shows them all; a step it cannot go past ends the
//                   run at once with the page URL, the last 20 browser
//                   console messages and failure.png.
// Everything else (step names, diagnostics) goes to stderr.
//
// Env: WAYPOINT_URL (http://127.0.0.1:port), OFFICER_TOKEN, ADMIN_TOKEN,
// SCREENSHOT_DIR; optional RESOLVE_NOTE (the note the resolution carries),
// ADDED_NOTE (a note added before acknowledging),
// DASHBOARD_DEBUG=1 (every browser console message and failed request to
// stderr as it happens), CHROMIUM (another browser binary).
//
// Selectors follow the dashboard contract (docs/dashboard.md and the
// element ids it fixes); the page is never reloaded between READY and the
// alert's arrival, so the row must come over the live stream.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.log(`FAIL missing environment variable ${name}`);
    process.exit(2);
  }
  return v;
};
const BASE = env('WAYPOINT_URL').replace(/\/+$/, '');
const OFFICER_TOKEN = env('OFFICER_TOKEN');
const ADMIN_TOKEN = env('ADMIN_TOKEN');
const SHOTS = env('SCREENSHOT_DIR');
// The tag is a marker: if the page renders notes as HTML it becomes an
// element, which the test looks for.
const NOTE =
  process.env.RESOLVE_NOTE ||
  'Phoned C-100: walking a friend\'s dog <wp-xss>not markup</wp-xss> & agreed a new route';
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
// A note added before the decision.
const NOTE_ADDED = process.env.ADDED_NOTE || 'Left a voicemail for C-100.';
// What the admin creates (tests/dashboard.rs looks for them in the database).
const ADMIN_DEVICE = 'tag-admin-1';
const ADMIN_ZONE = 'school-1';

const SHORT = 10_000; // one UI reaction
const LONG = 30_000; // data over the network / the live stream
const WATCHDOG = 110_000; // the whole run (the Rust side allows 120 s)

fs.mkdirSync(SHOTS, { recursive: true });

const consoleLog = [];
const remember = (line) => {
  if (process.env.DASHBOARD_DEBUG) console.error('[browser]', line);
  consoleLog.push(line);
  if (consoleLog.length > 200) consoleLog.shift();
};
const pageErrors = [];
const cspViolations = [];
let step = 'start';
let browser;
let page;

const log = (...a) => console.error('[dashboard.mjs]', ...a);
const begin = (name) => {
  step = name;
  log(`step: ${name}`);
};

class Check extends Error {}
/** A failure the run cannot go on from. */
const check = (cond, msg) => {
  if (!cond) throw new Check(msg);
};
/** A defect the run can go on past: reported with the others at the end. */
const problems = [];
const expect = (cond, msg) => {
  if (!cond) {
    problems.push(`[${step}] ${msg}`);
    log(`PROBLEM: ${msg}`);
  }
  return Boolean(cond);
};

async function fail(err) {
  const url = page ? page.url() : '(no page)';
  for (const p of problems) console.log(`FAIL problem: ${p}`);
  console.log(`FAIL at step "${step}": ${err && err.message ? err.message : err}`);
  if (err && !(err instanceof Check) && err.stack) {
    for (const l of String(err.stack).split('\n').slice(1, 6)) console.log(`FAIL   ${l.trim()}`);
  }
  console.log(`FAIL page URL: ${url}`);
  const last = consoleLog.slice(-20);
  console.log(`FAIL last ${last.length} browser console messages:`);
  for (const l of last) console.log(`FAIL   ${l.replace(/\n/g, ' | ')}`);
  if (page) {
    try {
      await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true, timeout: SHORT });
      console.log(`FAIL screenshot: ${path.join(SHOTS, 'failure.png')}`);
    } catch (e) {
      console.log(`FAIL (no failure screenshot: ${e.message})`);
    }
  }
  try {
    if (browser) await browser.close();
  } catch {
    // exiting anyway
  }
  process.exit(1);
}

const watchdog = setTimeout(
  () => fail(new Error(`watchdog: the run took longer than ${WATCHDOG / 1000} s`)),
  WATCHDOG,
);

/** Screenshot of the whole page, after checking it shows no leaked
 * programming values ("null", "undefined", "NaN", "[object Object]"). */
async function shot(name) {
  const junk = await page.evaluate(() => {
    const out = [];
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      const el = n.parentElement;
      if (!el || el.closest('script, style, textarea, [hidden]') || !el.getClientRects().length) continue;
      const m = n.textContent.match(/\b(null|undefined|NaN)\b|\[object Object\]|Invalid Date/);
      if (m) {
        const ctx = (el.innerText || el.textContent || '').trim().slice(0, 80);
        const where = el.id ? `#${el.id}` : el.closest('[id]') ? `in #${el.closest('[id]').id}` : el.tagName;
        out.push(`${JSON.stringify(m[0])} ${where}: ${JSON.stringify(ctx)}`);
      }
    }
    return out;
  });
  await page.screenshot({ path: path.join(SHOTS, name), fullPage: true, timeout: LONG });
  expect(junk.length === 0, `${name}: the page shows programming values: ${junk.join('; ')}`);
}

/** Visible text of `sel` (trimmed, '' when absent). */
const text = (sel) =>
  page.evaluate((s) => {
    const el = document.querySelector(s);
    return el ? (el.innerText || el.textContent || '').trim() : '';
  }, sel);

/** Waits until `fn(arg)` in the page is truthy; explains `what` on timeout. */
async function until(what, fn, arg, timeout = SHORT) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (e) {
    throw new Check(`timed out after ${timeout / 1000} s waiting for ${what}`);
  }
}

/** Like until(), but a timeout is a defect to report, not the end of the run. */
async function soon(what, fn, arg, timeout = SHORT) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    return true;
  } catch {
    return expect(false, `timed out after ${timeout / 1000} s waiting for ${what}`);
  }
}

async function visible(sel, what, timeout = SHORT) {
  try {
    await page.locator(sel).first().waitFor({ state: 'visible', timeout });
  } catch {
    const n = await page.locator(sel).count();
    throw new Check(
      n === 0
        ? `${what}: no element matches ${sel} within ${timeout / 1000} s`
        : `${what}: ${sel} exists but is not visible within ${timeout / 1000} s`,
    );
  }
}

async function storage() {
  return page.evaluate(() => {
    const dump = (s) => {
      const out = {};
      for (let i = 0; i < s.length; i++) out[s.key(i)] = s.getItem(s.key(i));
      return out;
    };
    return { local: dump(localStorage), session: dump(sessionStorage), cookie: document.cookie };
  });
}

async function signIn(token, who) {
  await visible('input#token', `sign-in form (${who})`);
  await page.fill('input#token', token);
  await page.click('button#sign-in');
  try {
    await page.locator('input#token').waitFor({ state: 'hidden', timeout: SHORT });
  } catch {
    const err = await text('#sign-in-error');
    throw new Check(`signing in as ${who} did not leave the sign-in form (#sign-in-error: ${JSON.stringify(err)})`);
  }
  await visible('button#sign-out', `header after signing in as ${who}`);
}

async function main() {
  begin('launch chromium');
  browser = await chromium.launch({
    executablePath: EXECUTABLE,
    // Root in a container: no sandbox; a small /dev/shm must not crash it.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
    timeout: LONG,
  });
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    timezoneId: 'Europe/London',
    locale: 'en-GB',
  });
  page = await context.newPage();
  page.setDefaultTimeout(SHORT);
  page.setDefaultNavigationTimeout(LONG);
  page.on('console', (m) => {
    const t = m.text();
    remember(`[console.${m.type()}] ${t}`);
    if (/Content.Security.Policy/i.test(t)) cspViolations.push(t);
  });
  page.on('pageerror', (e) => {
    const at = String(e.stack || '')
      .split('\n')
      .filter((l) => /^\s*at /.test(l))
      .slice(0, 8)
      .map((l) => l.trim().replace(BASE, ''))
      .join(' < ');
    remember(`[pageerror] ${e.message}${at ? ` (${at})` : ''}`);
    pageErrors.push(`during "${step}" on ${page.url().replace(BASE, '')}: ${e.message}${at ? ` (${at})` : ''}`);
  });
  page.on('requestfailed', (r) => {
    const why = r.failure() ? r.failure().errorText : '?';
    // EventSource connections are cut when the page navigates or signs out.
    remember(`[requestfailed] ${r.method()} ${r.url()} ${why}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) remember(`[http ${r.status()}] ${r.request().method()} ${r.url()}`);
  });

  // --- Sign-in ------------------------------------------------------------
  begin('open the dashboard');
  const resp = await page.goto(`${BASE}/`, { waitUntil: 'domcontentloaded' });
  check(resp && resp.status() === 200, `GET / answered ${resp && resp.status()}`);
  await visible('input#token', 'sign-in form');
  await visible('button#sign-in', 'sign-in button');
  expect(
    (await page.getAttribute('input#token', 'type')) === 'password',
    'input#token must be type=password',
  );
  expect(
    await page.evaluate(() => {
      const i = document.querySelector('input#token');
      return Boolean(
        (i.labels && i.labels.length && i.labels[0].textContent.trim()) ||
          i.getAttribute('aria-label') ||
          i.getAttribute('aria-labelledby'),
      );
    }),
    'input#token has no label',
  );
  await shot('signin.png');

  begin('a wrong token is refused with a message');
  await page.fill('input#token', 'wpt_not-a-real-token');
  await page.click('button#sign-in');
  await until(
    '#sign-in-error to explain the refused token',
    () => {
      const e = document.querySelector('#sign-in-error');
      return e && (e.innerText || e.textContent).trim().length > 0;
    },
    undefined,
  );
  expect(await page.locator('input#token').isVisible(), 'the sign-in form went away after a refused token');

  begin('sign in as the officer');
  await signIn(OFFICER_TOKEN, 'officer');
  await visible('#queue', 'queue');
  await until(
    '#live-status to say "live" (EventSource open)',
    () => {
      const e = document.querySelector('#live-status');
      return e && /\blive\b/i.test(e.innerText || e.textContent) && !/\bnot live\b/i.test(e.innerText || e.textContent);
    },
    undefined,
    LONG,
  );
  const who = await text('#who');
  expect(/pc-1/.test(who), `#who should show the officer ref pc-1, shows ${JSON.stringify(who)}`);
  expect(/officer/i.test(who), `#who should show the role (officer), shows ${JSON.stringify(who)}`);
  expect(!page.url().includes(OFFICER_TOKEN), 'the token is in the URL');
  {
    const s = await storage();
    const all = JSON.stringify(s);
    expect(!all.includes(OFFICER_TOKEN), `the token is kept in browser storage: ${all}`);
    expect(!/wp_session|wpc_/.test(s.cookie), `the session cookie is readable by scripts: ${s.cookie}`);
  }
  const cookies = await context.cookies(BASE + '/api/v1/session');
  const sess = cookies.find((c) => c.name === 'wp_session');
  check(sess, `no wp_session cookie after signing in (cookies: ${cookies.map((c) => c.name).join(', ') || 'none'})`);
  expect(sess.httpOnly, 'the session cookie is not HttpOnly');
  expect(sess.sameSite === 'Strict', `the session cookie is SameSite=${sess.sameSite}`);
  const before = await page.locator('[data-alert-id]').count();
  check(before === 0, `the queue already has ${before} alert rows before any alert was raised`);
  // Survives only as long as the document does: a reload would drop it.
  await page.evaluate(() => {
    window.__waypointNoReload = true;
  });
  console.log('READY');

  // --- The alert arrives live ----------------------------------------------
  begin('wait for the alert to arrive live (no reload)');
  try {
    await page.locator('[data-alert-id]').first().waitFor({ state: 'visible', timeout: LONG });
  } catch {
    throw new Check(
      `no [data-alert-id] row appeared in the queue within ${LONG / 1000} s of the alert being raised (#live-status: ${JSON.stringify(await text('#live-status'))})`,
    );
  }
  expect(
    await page.evaluate(() => window.__waypointNoReload === true),
    'the page reloaded to show the new alert (it must arrive over the live stream)',
  );
  const row = page.locator('[data-alert-id]').first();
  const alertId = await row.getAttribute('data-alert-id');
  check(/^\d+$/.test(alertId || ''), `data-alert-id is not numeric: ${JSON.stringify(alertId)}`);
  expect(
    (await row.getAttribute('data-status')) === 'open',
    `new row has data-status=${JSON.stringify(await row.getAttribute('data-status'))}, expected "open"`,
  );
  const rowText = ((await row.innerText()) || '').toLowerCase();
  for (const want of ['exclusion', 'critical', 'confirmed', 'victim residence']) {
    expect(rowText.includes(want), `the queue row does not show ${want}: ${JSON.stringify(rowText)}`);
  }
  expect(
    (await page.getAttribute('#announcer', 'aria-live')) === 'polite',
    '#announcer must exist with aria-live="polite"',
  );
  await soon(
    '#announcer to announce the new alert',
    () => (document.querySelector('#announcer').textContent || '').trim().length > 0,
    undefined,
  );
  await shot('queue.png');

  // --- Alert detail, opened from the keyboard -------------------------------
  begin('open the alert with the keyboard (focus the row, Enter)');
  await row.focus();
  const focused = await page.evaluate((id) => {
    const r = document.querySelector(`[data-alert-id="${id}"]`);
    const a = document.activeElement;
    return { onRow: a === r, inRow: r.contains(a), tag: a ? a.tagName : null };
  }, alertId);
  if (!focused.onRow) {
    // A row may carry its link; then the link takes the focus.
    const link = row.locator('a[href], button, [tabindex]').first();
    check(
      (await link.count()) > 0,
      `the queue row cannot take keyboard focus (no tabindex, no link inside; focus is on ${focused.tag})`,
    );
    await link.focus();
  }
  await page.keyboard.press('Enter');
  await until(
    `the hash route #/alerts/${alertId}`,
    (id) => location.hash === `#/alerts/${id}`,
    alertId,
  );
  await visible('#alert-detail', 'alert detail', LONG);
  await until(
    '#alert-explanation to be filled',
    () => {
      const e = document.querySelector('#alert-explanation');
      return e && (e.innerText || e.textContent).trim().length > 0;
    },
    undefined,
    LONG,
  );
  const explanation = await text('#alert-explanation');
  expect(
    /exclusion zone/i.test(explanation),
    `#alert-explanation does not explain the zone entry: ${JSON.stringify(explanation)}`,
  );
  await visible('#map', 'alert map');
  await until('a .zone-layer in #map', () => document.querySelector('#map .zone-layer'), undefined, LONG);
  await until('.evidence-layer in #map', () => document.querySelector('#map .evidence-layer'), undefined, LONG);
  const evidenceRows = await page.evaluate(() => {
    const e = document.querySelector('#evidence');
    if (!e) return -1;
    const body = e.querySelectorAll('tbody tr');
    if (body.length) return body.length;
    const trs = [...e.querySelectorAll('tr')].filter((tr) => tr.querySelector('td'));
    if (trs.length) return trs.length;
    return e.querySelectorAll('li').length;
  });
  expect(evidenceRows !== -1, '#evidence is missing');
  expect(evidenceRows >= 2, `#evidence lists ${evidenceRows} fixes, expected at least 2 (the triggering fixes)`);
  expect(
    /open/i.test(await text('#alert-status')),
    `#alert-status should say open, says ${JSON.stringify(await text('#alert-status'))}`,
  );
  // Every evidence fix and the zone are drawn inside the map.
  const mapShows = (sel) => {
    const m = document.querySelector('#map').getBoundingClientRect();
    const els = [...document.querySelectorAll(`#map ${sel}`)];
    return (
      els.length > 0 &&
      els.every((t) => {
        const r = t.getBoundingClientRect();
        const drawn = t.tagName.toLowerCase() !== 'path' || (t.getAttribute('d') || 'M0 0') !== 'M0 0';
        return drawn && r.top >= m.top - 1 && r.left >= m.left - 1 && r.bottom <= m.bottom + 1 && r.right <= m.right + 1;
      })
    );
  };
  await soon('every .evidence-layer drawn inside #map', mapShows, '.evidence-layer');
  await soon('the .zone-layer drawn inside #map', mapShows, '.zone-layer');
  expect((await page.locator('#alert-detail #escalations').count()) > 0, 'the alert detail has no #escalations');
  await shot('alert.png');

  // --- Note, acknowledge and resolve -----------------------------------------
  begin('add a note');
  await visible('textarea#new-note', 'note form');
  await page.fill('textarea#new-note', NOTE_ADDED);
  await page.click('button#add-note');
  await soon(
    '#history to list the note',
    (n) => [...document.querySelectorAll('#history li')].some((li) => /note/i.test(li.textContent) && li.textContent.includes(n)),
    NOTE_ADDED,
  );

  begin('acknowledge');
  await visible('button#acknowledge', 'acknowledge button');
  await page.click('button#acknowledge');
  await until(
    '#alert-status to say acknowledged',
    () => /acknowledged/i.test(document.querySelector('#alert-status').textContent),
    undefined,
  );

  begin('resolve with an outcome and a note');
  const options = await page.$$eval('select#outcome option', (os) => os.map((o) => o.value));
  for (const want of [
    'contacted_supervisee',
    'equipment_fault',
    'gps_false_alarm',
    'approved_absence',
    'referred_for_review',
    'no_action_needed',
  ]) {
    expect(options.includes(want), `select#outcome has no option ${want} (has ${options.join(', ')})`);
  }
  await page.selectOption('select#outcome', 'contacted_supervisee');
  await page.fill('textarea#note', NOTE);
  await page.click('button#resolve');
  await until(
    '#history to list the resolution with its note',
    (note) =>
      [...document.querySelectorAll('#history li')].some(
        (li) => /resolve/i.test(li.textContent) && li.textContent.includes(note),
      ),
    NOTE,
  );
  await until(
    '#alert-status to say resolved',
    () => /resolved/i.test(document.querySelector('#alert-status').textContent),
    undefined,
  );
  const history = await page.$$eval('#history li', (ls) => ls.map((l) => l.textContent.trim()));
  expect(
    history.some((l) => /acknowledge/i.test(l)),
    `#history does not list the acknowledgement: ${JSON.stringify(history)}`,
  );
  expect(
    history.some((l) => /resolve/i.test(l) && /pc-1/.test(l) && /contacted/i.test(l)),
    `#history's resolution does not name the actor pc-1 and the outcome: ${JSON.stringify(history)}`,
  );
  expect(
    (await page.locator('wp-xss').count()) === 0,
    'the note was rendered as HTML (a <wp-xss> element exists): notes must be shown as text',
  );

  // --- Supervisee page --------------------------------------------------------
  begin('open the supervisee page from the alert');
  const link = page.locator('#alert-detail a[href^="#/supervisees/"]').first();
  check((await link.count()) > 0, 'the alert detail has no link to the supervisee (a[href^="#/supervisees/"])');
  await link.click();
  await until('the hash route #/supervisees/{id}', () => /^#\/supervisees\/\d+$/.test(location.hash), undefined);
  await visible('#supervisee', 'supervisee page', LONG);
  // The page fills in once the supervisee is loaded.
  for (const sel of ['#latest-position', '#schedule', '#exceptions', '#compliance', 'input#replay[type=range]']) {
    try {
      await page.locator(`#supervisee ${sel}`).first().waitFor({ state: 'attached', timeout: LONG });
    } catch {
      throw new Check(`the supervisee page has no ${sel} within ${LONG / 1000} s`);
    }
  }
  await soon(
    '#compliance to show its summary',
    () => (document.querySelector('#compliance').textContent || '').trim().length > 0,
    undefined,
    LONG,
  );
  begin('load a track for a period');
  await setWhen('#track-from', new Date(Date.now() - 3 * 3600_000));
  await setWhen('#track-to', new Date(Date.now() + 2 * 3600_000));
  await page.click('button#load-track');
  await until('a .track-layer in #map after Load track', () => document.querySelector('#map .track-layer'), undefined, LONG);
  // The map fits the loaded track: every part of it is drawn ("M0 0" is
  // Leaflet's path for a layer outside the view) and inside the map.
  const fitted = () => {
    const m = document.querySelector('#map').getBoundingClientRect();
    return [...document.querySelectorAll('#map .track-layer')].every((t) => {
      const r = t.getBoundingClientRect();
      const drawn = t.tagName.toLowerCase() !== 'path' || (t.getAttribute('d') || 'M0 0') !== 'M0 0';
      return drawn && r.top >= m.top - 1 && r.left >= m.left - 1 && r.bottom <= m.bottom + 1 && r.right <= m.right + 1;
    });
  };
  try {
    await page.waitForFunction(fitted, undefined, { timeout: SHORT, polling: 100 });
  } catch {
    const geo = await page.evaluate(() => ({
      map: document.querySelector('#map').getBoundingClientRect().toJSON(),
      track: [...document.querySelectorAll('#map .track-layer')].map((t) => ({
        cls: t.getAttribute('class'),
        d: (t.getAttribute('d') || '').slice(0, 40),
        box: t.getBoundingClientRect().toJSON(),
      })),
    }));
    expect(false, `the map is not fitted to the loaded track (parts of it are outside #map or not drawn): ${JSON.stringify(geo)}`);
  }
  await shot('supervisee.png');

  // --- Tablet --------------------------------------------------------------------
  begin('the queue on a 768x1024 tablet');
  await page.setViewportSize({ width: 768, height: 1024 });
  await page.evaluate(() => {
    location.hash = '#/';
  });
  await visible('#queue', 'queue (tablet)');
  await page.locator(`[data-alert-id="${alertId}"]`).waitFor({ state: 'visible', timeout: LONG });
  await soon(
    'the queue row to show data-status="resolved"',
    (id) => document.querySelector(`[data-alert-id="${id}"]`).dataset.status === 'resolved',
    alertId,
  );
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth,
  }));
  expect(
    widths.scroll <= widths.inner,
    `the queue scrolls horizontally on a tablet: scrollWidth ${widths.scroll} > innerWidth ${widths.inner}`,
  );
  await shot('tablet-queue.png');
  await page.evaluate((id) => {
    location.hash = `#/alerts/${id}`;
  }, alertId);
  await visible('#alert-detail', 'alert detail (tablet)', LONG);
  await soon('the alert detail to load (tablet)', () => /resolved/i.test(document.querySelector('#alert-status')?.textContent || ''), undefined);
  const detailWidths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth,
  }));
  expect(
    detailWidths.scroll <= detailWidths.inner,
    `the alert detail scrolls horizontally on a tablet: scrollWidth ${detailWidths.scroll} > innerWidth ${detailWidths.inner}`,
  );
  await page.setViewportSize({ width: 1280, height: 800 });

  // --- Sign out ---------------------------------------------------------------------
  begin('sign out');
  await page.click('button#sign-out');
  await visible('input#token', 'sign-in form after signing out');
  {
    const s = await storage();
    expect(!/wp_session|wpc_/.test(s.cookie), `document.cookie shows the session: ${s.cookie}`);
    expect(
      Object.keys(s.local).length === 0,
      `localStorage is not empty after signing out: ${JSON.stringify(s.local)}`,
    );
    expect(
      Object.keys(s.session).length === 0,
      `sessionStorage is not empty after signing out: ${JSON.stringify(s.session)}`,
    );
  }
  const left = (await context.cookies(BASE + '/api/v1/session')).filter((c) => c.name === 'wp_session');
  expect(left.length === 0 || left[0].value === '', 'the session cookie is still in the browser after signing out');
  const after = await page.evaluate(async () => (await fetch('/api/v1/session', { credentials: 'same-origin' })).status);
  expect(after === 401, `GET /api/v1/session after signing out answered ${after}, expected 401`);
  expect((await page.locator('[data-alert-id]:visible').count()) === 0, 'alert rows are still visible after signing out');

  // --- Admin --------------------------------------------------------------------------
  begin('sign in as admin and open #/admin');
  await signIn(ADMIN_TOKEN, 'admin');
  await page.evaluate(() => {
    location.hash = '#/admin';
  });
  await visible('#admin', 'admin page', LONG);
  for (const sel of [
    '#device-id',
    '#report-interval',
    'button#enroll',
    '#zone-ref',
    '#zone-name',
    'button#draw-zone',
    'button#save-zone',
    '#rule-supervisee',
    'button#save-rule',
    'button#save-exception',
  ]) {
    expect((await page.locator(sel).count()) > 0, `the admin page has no ${sel}`);
  }
  // API refusals are shown next to the form, naming the field.
  const refusal = (control, field) =>
    soon(
      `an error next to the form of ${control} naming the field ${field}`,
      ([c, f]) => {
        const form = document.querySelector(c).closest('form') || document.querySelector('#admin');
        return [...form.querySelectorAll('[role=alert], .field-error, .error')].some(
          (e) => !e.closest('[hidden]') && e.textContent.includes(f),
        );
      },
      [control, field],
    );
  const listed = (what) =>
    soon(`${what} to be listed on the admin page`, (w) => document.querySelector('#admin').innerText.includes(w), what);

  begin('admin: enroll a device (refused, then accepted)');
  await page.fill('#device-id', 'not a device id!');
  await page.click('button#enroll');
  await refusal('#device-id', 'device_id');
  await page.fill('#device-id', ADMIN_DEVICE);
  await page.fill('#report-interval', '30');
  await page.click('button#enroll');
  await listed(ADMIN_DEVICE);

  begin('admin: save a zone from GeoJSON (refused, then accepted)');
  await page.fill('#zone-ref', ADMIN_ZONE);
  await page.fill('#zone-name', 'Primary school');
  await page.fill(
    '#zone-geojson',
    JSON.stringify({ type: 'Polygon', coordinates: [[[-0.1, 51.5], [-0.1, 51.501]]] }),
  );
  await page.click('button#save-zone');
  await refusal('#zone-geojson', 'geojson');
  await page.fill(
    '#zone-geojson',
    JSON.stringify({
      type: 'Feature',
      properties: {},
      geometry: {
        type: 'Polygon',
        coordinates: [[[-0.1, 51.5], [-0.099, 51.5], [-0.099, 51.501], [-0.1, 51.501], [-0.1, 51.5]]],
      },
    }),
  );
  await page.click('button#save-zone');
  await listed(ADMIN_ZONE);
  await shot('admin.png');

  begin('no script errors, no CSP violations');
  expect(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join(' || ')}`);
  expect(cspViolations.length === 0, `Content-Security-Policy violations: ${cspViolations.join(' || ')}`);

  await browser.close();
  browser = null;
  clearTimeout(watchdog);
  if (problems.length) {
    for (const p of problems) console.log(`FAIL problem: ${p}`);
    console.log(`FAIL ${problems.length} problem(s) in the dashboard (the run went to the end; screenshots written)`);
    for (const l of consoleLog.filter((l) => /pageerror|console\.(error|warn)/.test(l)).slice(-20)) {
      console.log(`FAIL   ${l.replace(/\n/g, ' | ')}`);
    }
    process.exit(1);
  }
  console.log(`DONE ${alertId}`);
}

/** Fills a date/time input with `when`, in the form its type takes. */
async function setWhen(sel, when) {
  await visible(sel, sel);
  const type = (await page.getAttribute(sel, 'type')) || 'text';
  // Local wall time in the browser's zone (the context is Europe/London).
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-GB', {
      timeZone: 'Europe/London',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      hourCycle: 'h23',
    })
      .formatToParts(when)
      .map((p) => [p.type, p.value]),
  );
  const date = `${parts.year}-${parts.month}-${parts.day}`;
  const value =
    type === 'datetime-local'
      ? `${date}T${parts.hour}:${parts.minute}`
      : type === 'date'
        ? date
        : when.toISOString();
  await page.fill(sel, value);
}

main().catch(fail);
