// Waypoint officer dashboard: sign-in, session, routing, live stream.
// Vanilla ES modules, no build step. Nothing is written to localStorage or
// sessionStorage; URLs carry numeric ids only.

import { h, clear, announce, kindLabel, localTimeZone } from './js/dom.js';
import { get, post, del, onUnauthorized, ApiError, errorText } from './js/api.js';
import { field } from './js/forms.js';
import * as store from './js/store.js';
import { startStream, stopStream, nudgeStream } from './js/stream.js';
import { renderQueue, loadActive, resetQueue } from './js/queue.js';
import { renderAlert } from './js/alert.js';
import { renderSupervisee } from './js/supervisee.js';
import { renderCaseload } from './js/caseload.js';
import { renderAdmin } from './js/admin.js';

const CASEWORK = new Set(['officer', 'supervisor']);

const state = {
  session: null,
  dispose: null,
  expiryTimer: null,
  unsubStore: null,
  firstRoute: true,
};

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const sessionBar = document.getElementById('session-bar');
const who = document.getElementById('who');
const liveStatus = document.getElementById('live-status');
const signOutBtn = document.getElementById('sign-out');
const openCount = document.getElementById('open-count');
const tzFooter = document.getElementById('tz-footer');

// ---------- page context ----------

const ctx = {
  get session() {
    return state.session;
  },
  /** Moves focus to the page's heading after navigation (not on first load). */
  focusTitle(el) {
    if (state.firstRoute) return;
    window.requestAnimationFrame(() => {
      if (el && el.isConnected) el.focus({ preventScroll: false });
    });
  },
};

function disposePage() {
  if (state.dispose) {
    try {
      state.dispose();
    } catch (e) {
      console.error(e); // eslint-disable-line no-console
    }
  }
  state.dispose = null;
}

function messagePage(titleText, text) {
  disposePage();
  clear(main);
  const title = h('h1', { id: 'page-title', tabindex: '-1', text: titleText });
  main.append(h('section', { class: 'page page-message-only', 'aria-labelledby': 'page-title' }, title, h('p', { text })));
  ctx.focusTitle(title);
  document.title = `${titleText} · Waypoint`;
}

// ---------- sign-in ----------

function renderSignIn(notice) {
  disposePage();
  clear(main);
  nav.hidden = true;
  sessionBar.hidden = true;
  who.textContent = '';
  document.title = 'Sign in · Waypoint';
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', spellcheck: false, required: true });
  const btn = h('button', { id: 'sign-in', type: 'submit', class: 'primary', text: 'Sign in' });
  const err = h('div', { id: 'sign-in-error', class: 'form-error', role: 'alert' });
  err.hidden = true;
  const title = h('h1', { id: 'page-title', tabindex: '-1', text: 'Sign in to Waypoint' });
  const form = h('form', { id: 'sign-in-form', class: 'signin-form', novalidate: true },
    field('API token', token, 'Your personal token (starts with wpt_). It starts a session and is not kept by this page.'),
    btn, err);
  main.append(h('section', { class: 'page page-signin', 'aria-labelledby': 'page-title' },
    title,
    notice ? h('p', { class: 'notice', role: 'status', text: notice }) : null,
    form,
    h('p', { class: 'hint', text: 'Electronic monitoring for probation and parole. An alert is a prompt for you to decide; nothing here acts on a supervised person automatically.' })));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    err.textContent = '';
    token.removeAttribute('aria-invalid');
    const value = token.value.trim();
    if (!value) {
      err.textContent = 'Enter your API token.';
      err.hidden = false;
      token.setAttribute('aria-invalid', 'true');
      token.focus();
      return;
    }
    btn.disabled = true;
    try {
      const s = await post('/session', { token: value }, { allow401: true });
      token.value = '';
      await signedIn(s, true);
    } catch (e) {
      token.value = '';
      if (e instanceof ApiError && e.status === 401) err.textContent = 'That token was not accepted: it is unknown, revoked or expired.';
      else if (e instanceof ApiError && e.fieldErrors.length) err.textContent = e.fieldErrors.map((f) => `${f.field}: ${f.message}`).join('; ');
      else err.textContent = `Could not sign in: ${errorText(e)}`;
      err.hidden = false;
      token.setAttribute('aria-invalid', 'true');
      token.focus();
    } finally {
      btn.disabled = false;
    }
  });
  window.requestAnimationFrame(() => token.focus());
}

// ---------- session ----------

function setLive(stateName) {
  const text = { live: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…' }[stateName] || stateName;
  liveStatus.textContent = text;
  liveStatus.dataset.state = stateName;
  liveStatus.title = stateName === 'live' ? 'New alerts appear as they are raised.' : 'The live feed is reconnecting; the queue may be out of date.';
}

let pendingNew = [];
let announceTimer = null;

function announceNew() {
  const list = pendingNew;
  pendingNew = [];
  if (!list.length) return;
  if (list.length === 1) {
    const a = list[0];
    announce(`New ${a.severity} alert: ${kindLabel(a.kind)}${a.case_ref ? ` for ${a.case_ref}` : ''}. ${a.explanation || ''}`);
  } else {
    const worst = list.map((a) => a.severity).sort((x, y) => ['critical', 'high', 'medium', 'low'].indexOf(x) - ['critical', 'high', 'medium', 'low'].indexOf(y))[0];
    announce(`${list.length} new alerts; the most severe is ${worst}.`);
  }
}

function updateCounts() {
  let n = 0;
  for (const a of store.alerts.values()) if (a.status === 'open') n += 1;
  openCount.textContent = n ? String(n) : '';
  openCount.hidden = !n;
  openCount.setAttribute('aria-label', `${n} open`);
  const base = document.title.replace(/^\(\d+\)\s*/, '');
  document.title = n ? `(${n}) ${base}` : base;
}

async function signedIn(session, fromForm = false) {
  state.session = session;
  // After signing in, focus moves to the first page's heading.
  state.firstRoute = !fromForm;
  const role = session.role;
  who.textContent = session.officer_ref ? `${session.officer_ref} · ${role}` : role;
  sessionBar.hidden = false;
  nav.hidden = false;
  document.getElementById('nav-queue').hidden = !CASEWORK.has(role);
  document.getElementById('nav-caseload').hidden = !CASEWORK.has(role);
  document.getElementById('nav-admin').hidden = role !== 'admin';

  clearTimeout(state.expiryTimer);
  const ms = new Date(session.expires_at).getTime() - Date.now();
  if (Number.isFinite(ms) && ms > 0) {
    // At expiry the next request answers 401 and brings the sign-in back.
    state.expiryTimer = setTimeout(() => { get('/session').catch(() => {}); }, Math.min(ms + 1000, 2 ** 31 - 1));
  }

  if (CASEWORK.has(role)) {
    liveStatus.hidden = false;
    setLive('connecting');
    if (state.unsubStore) state.unsubStore();
    state.unsubStore = store.subscribe((change) => {
      if (change.type === 'event' && change.isNew && change.eventType === 'raised' && change.alert.status === 'open') {
        pendingNew.push(change.alert);
        clearTimeout(announceTimer);
        announceTimer = setTimeout(announceNew, 700);
      }
      updateCounts();
    });
    startStream({
      onStatus: setLive,
      onEvent: (type, data, id) => store.applyEvent(type, data, id),
    });
    loadActive().then(updateCounts).catch(() => {});
  } else {
    liveStatus.hidden = true;
    liveStatus.textContent = '';
  }
  route();
}

function signedOut(notice) {
  clearTimeout(state.expiryTimer);
  clearTimeout(announceTimer);
  pendingNew = [];
  stopStream();
  if (state.unsubStore) state.unsubStore();
  state.unsubStore = null;
  store.reset();
  resetQueue();
  state.session = null;
  openCount.textContent = '';
  renderSignIn(notice);
}

onUnauthorized(() => {
  if (state.session) signedOut('Your session has ended. Please sign in again.');
});

signOutBtn.addEventListener('click', async () => {
  signOutBtn.disabled = true;
  try {
    await del('/session', { allow401: true });
  } catch (_) {
    /* signed out locally either way */
  } finally {
    signOutBtn.disabled = false;
  }
  signedOut('You have signed out.');
});

// ---------- routing ----------

function setCurrentNav(which) {
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.nav === which) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function route() {
  if (!state.session) return;
  const hash = location.hash || '#/';
  // In-page anchors (the skip link) are not routes.
  if (!hash.startsWith('#/')) return;
  const role = state.session.role;
  const path = hash.slice(1);
  let m;
  disposePage();
  const first = state.firstRoute;

  if (role === 'auditor') {
    setCurrentNav('');
    messagePage('Auditor', 'This dashboard is for officers, supervisors and administrators. Auditors query the audit log through the API (GET /api/v1/audit).');
  } else if (path === '/admin') {
    setCurrentNav('admin');
    if (role !== 'admin') messagePage('Not available', 'Administration is for administrators.');
    else {
      document.title = 'Administration · Waypoint';
      state.dispose = renderAdmin(main, ctx);
    }
  } else if (role === 'admin') {
    if (path === '/' || path === '') {
      location.replace('#/admin');
      return;
    }
    setCurrentNav('');
    messagePage('Not available', 'Administrators see no positions, tracks or alerts. Use the administration page.');
  } else if (path === '/' || path === '') {
    setCurrentNav('queue');
    document.title = 'Alert queue · Waypoint';
    state.dispose = renderQueue(main, ctx);
  } else if (path === '/caseload') {
    setCurrentNav('caseload');
    document.title = 'Caseload · Waypoint';
    state.dispose = renderCaseload(main, ctx);
  } else if ((m = /^\/alerts\/(\d+)$/.exec(path))) {
    setCurrentNav('');
    document.title = `Alert ${m[1]} · Waypoint`;
    state.dispose = renderAlert(main, ctx, m[1]);
  } else if ((m = /^\/supervisees\/(\d+)$/.exec(path))) {
    setCurrentNav('caseload');
    document.title = 'Supervisee · Waypoint';
    state.dispose = renderSupervisee(main, ctx, m[1]);
  } else {
    setCurrentNav('');
    messagePage('Page not found', 'There is no such page. Use the navigation above.');
  }
  if (CASEWORK.has(role)) updateCounts();
  state.firstRoute = false;
  if (!first) window.scrollTo(0, 0);
}

window.addEventListener('hashchange', route);
window.addEventListener('online', nudgeStream);

// Skip link: focus the main region without touching the hash route.
document.getElementById('skip-link').addEventListener('click', (ev) => {
  ev.preventDefault();
  const title = main.querySelector('h1');
  (title || main).focus();
});

if (tzFooter) tzFooter.textContent = `Times are shown in your time zone (${localTimeZone()}); a supervisee’s own time zone is given in brackets where it differs.`;

// ---------- boot ----------

(async function boot() {
  try {
    const s = await get('/session', { allow401: true });
    await signedIn(s);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) renderSignIn();
    else {
      renderSignIn(`The server could not be reached (${errorText(e)}). Try again shortly.`);
    }
  }
}());
