// Alert queue: open and acknowledged alerts by severity then newest, live.

import { h, clear, badge, kindLabel, humanize, severityRank, timeEl, fmtAgo, announce, SEVERITIES } from './dom.js';
import { get, post, getAll, errorText, ApiError } from './api.js';
import * as store from './store.js';

const ACTIVE = new Set(['open', 'acknowledged']);

let loadPromise = null;

/** Loads open and acknowledged alerts into the store (once per sign-in). */
export function loadActive(force = false) {
  if (!loadPromise || force) {
    loadPromise = Promise.all([
      getAll('/alerts', { status: 'open' }, 1000),
      getAll('/alerts', { status: 'acknowledged' }, 1000),
    ]).then(([o, a]) => {
      store.upsertMany([...o.items, ...a.items], { silent: true });
      store.markLoaded();
      return { more: o.more || a.more };
    }).catch((e) => {
      loadPromise = null;
      throw e;
    });
  }
  return loadPromise;
}

export function resetQueue() {
  loadPromise = null;
}

function compare(a, b) {
  const ga = ACTIVE.has(a.status) ? 0 : 1;
  const gb = ACTIVE.has(b.status) ? 0 : 1;
  if (ga !== gb) return ga - gb;
  if (ga === 0) {
    const s = severityRank(a.severity) - severityRank(b.severity);
    if (s) return s;
  }
  const t = new Date(b.raised_at) - new Date(a.raised_at);
  if (t) return t;
  return b.alert_id - a.alert_id;
}

export function acknowledge(id) {
  return post(`/alerts/${id}/acknowledge`, undefined).then((detail) => {
    store.upsertMany([detail]);
    return detail;
  });
}

/** Renders the queue page. Returns a dispose function. */
export function renderQueue(main, ctx) {
  const view = { status: 'active', severity: '' };
  const rows = new Map(); // alert_id -> <tr>
  let resolvedLoaded = false;
  let resolvedCursor = null;

  const title = h('h1', { id: 'page-title', tabindex: '-1', text: 'Alert queue' });
  const counts = h('p', { class: 'queue-counts', id: 'queue-counts' });
  const statusSel = h('select', { id: 'queue-status' },
    h('option', { value: 'active', text: 'Open and acknowledged (and resolved just now)' }),
    h('option', { value: 'open', text: 'Open only' }),
    h('option', { value: 'acknowledged', text: 'Acknowledged only' }),
    h('option', { value: 'all', text: 'All, with recently resolved' }),
    h('option', { value: 'resolved', text: 'Resolved' }));
  const sevSel = h('select', { id: 'queue-severity' },
    h('option', { value: '', text: 'All severities' }),
    SEVERITIES.map((s) => h('option', { value: s, text: humanize(s) })));
  const filters = h('div', { class: 'filters', role: 'group', 'aria-label': 'Filter alerts' },
    h('div', { class: 'field inline' }, h('label', { for: 'queue-status', text: 'Show' }), statusSel),
    h('div', { class: 'field inline' }, h('label', { for: 'queue-severity', text: 'Severity' }), sevSel));
  const msg = h('p', { class: 'page-message', role: 'status' });
  const tbody = h('tbody');
  const table = h('table', { id: 'queue', class: 'queue' },
    h('caption', { class: 'sr-only', text: 'Alerts, most severe and newest first. Select a row to open the alert.' }),
    h('thead', {}, h('tr', {},
      ['Severity', 'Alert', 'Supervisee', 'Confidence', 'Explanation', 'Raised', 'Status', 'Action'].map((t) => h('th', { scope: 'col', text: t })))),
    tbody);
  const empty = h('p', { class: 'empty', hidden: true, text: 'No alerts to show. New alerts appear here as they are raised.' });
  const moreBtn = h('button', { type: 'button', class: 'secondary', hidden: true, text: 'Load older resolved alerts' });
  const tableWrap = h('div', { class: 'table-wrap' }, table);

  clear(main);
  main.append(h('section', { class: 'page page-queue', 'aria-labelledby': 'page-title' },
    h('div', { class: 'page-head' }, title, counts), filters, msg, tableWrap, empty, moreBtn));

  function visible(a) {
    if (view.severity && a.severity !== view.severity) return false;
    switch (view.status) {
      case 'active': return ACTIVE.has(a.status) || store.resolvedHere.has(a.alert_id);
      case 'open': return a.status === 'open';
      case 'acknowledged': return a.status === 'acknowledged';
      case 'resolved': return a.status === 'resolved';
      default: return true;
    }
  }

  function fillRow(tr, a) {
    tr.dataset.alertId = String(a.alert_id);
    tr.dataset.status = a.status;
    tr.dataset.severity = a.severity;
    tr.className = `alert-row sev-${a.severity} status-${a.status}`;
    tr.setAttribute('aria-label', `${humanize(a.severity)} ${kindLabel(a.kind)}${a.case_ref ? `, ${a.case_ref}` : ''}, ${a.status}. Open alert ${a.alert_id}.`);
    clear(tr);
    const flags = h('span', { class: 'flags' },
      a.late ? badge('flag', 'late', 'Late data') : null,
      a.escalated_at ? badge('flag', 'escalated', 'Escalated') : null,
      a.condition_ended_at ? badge('flag', 'ended', 'Condition ended') : null);
    const link = h('a', { href: `#/alerts/${a.alert_id}`, tabindex: '-1', text: kindLabel(a.kind) });
    const raised = h('td', { class: 'col-raised', dataset: { label: 'Raised' } },
      h('div', {}, timeEl(a.raised_at), h('span', { class: 'ago', dataset: { ts: a.raised_at }, text: fmtAgo(a.raised_at) })));
    let action = null;
    if (a.status === 'open') {
      action = h('button', {
        type: 'button', class: 'ack-inline', dataset: { ack: a.alert_id },
        'aria-label': `Acknowledge alert ${a.alert_id}: ${kindLabel(a.kind)}`, text: 'Acknowledge',
      });
    }
    tr.append(
      h('td', { class: 'col-sev', dataset: { label: 'Severity' } }, badge('severity', a.severity)),
      h('td', { class: 'col-kind', dataset: { label: 'Alert' } }, link, flags),
      h('td', { class: 'col-who', dataset: { label: 'Supervisee' }, text: a.case_ref || (a.supervisee_id ? `Supervisee ${a.supervisee_id}` : `Device ${a.device_id || ''}`) }),
      h('td', { class: 'col-conf', dataset: { label: 'Confidence' } }, badge('confidence', a.confidence)),
      h('td', { class: 'col-expl', dataset: { label: 'Explanation' }, text: a.explanation || '' }),
      raised,
      h('td', { class: 'col-status', dataset: { label: 'Status' } }, badge('status', a.status)),
      h('td', { class: 'col-action', dataset: { label: 'Action' } }, action),
    );
  }

  function rowFor(a) {
    let tr = rows.get(a.alert_id);
    if (!tr) {
      tr = h('tr', { tabindex: '0' });
      rows.set(a.alert_id, tr);
    }
    fillRow(tr, a);
    return tr;
  }

  function sync() {
    const list = [...store.alerts.values()].filter(visible).sort(compare);
    const wanted = new Set(list.map((a) => a.alert_id));
    const focused = document.activeElement;
    const focusedRow = focused && focused.closest ? focused.closest('tr[data-alert-id]') : null;
    const focusedId = focusedRow ? Number(focusedRow.dataset.alertId) : null;
    for (const [id, tr] of rows) {
      if (!wanted.has(id)) {
        tr.remove();
        rows.delete(id);
      }
    }
    list.forEach((a, i) => {
      const tr = rows.get(a.alert_id) || rowFor(a);
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    if (focusedId !== null && rows.has(focusedId) && document.activeElement !== focused) {
      rows.get(focusedId).focus();
    }
    empty.hidden = list.length > 0;
    const all = [...store.alerts.values()];
    const nOpen = all.filter((a) => a.status === 'open').length;
    const nAck = all.filter((a) => a.status === 'acknowledged').length;
    counts.textContent = `${nOpen} open, ${nAck} acknowledged`;
    moreBtn.hidden = !(view.status === 'resolved' || view.status === 'all') || !resolvedCursor;
  }

  function renderAll() {
    for (const a of store.alerts.values()) if (visible(a)) rowFor(a);
    sync();
  }

  async function loadResolved(more = false) {
    try {
      const page = await get('/alerts', { query: { status: 'resolved', limit: 50, cursor: more ? resolvedCursor : undefined } });
      resolvedLoaded = true;
      resolvedCursor = page.next_cursor || null;
      store.upsertMany(page.items || []);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) msg.textContent = errorText(e);
    }
  }

  // --- events ---
  tbody.addEventListener('click', async (ev) => {
    const ackBtn = ev.target.closest('button[data-ack]');
    if (ackBtn) {
      ev.stopPropagation();
      const id = Number(ackBtn.dataset.ack);
      ackBtn.disabled = true;
      ackBtn.textContent = 'Acknowledging…';
      try {
        await acknowledge(id);
        announce(`Alert ${id} acknowledged.`);
        const tr = rows.get(id);
        if (tr) tr.focus();
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return;
        msg.textContent = `Could not acknowledge alert ${id}: ${errorText(e)}`;
        ackBtn.disabled = false;
        ackBtn.textContent = 'Acknowledge';
      }
      return;
    }
    if (ev.target.closest('a')) return; // the link navigates by itself
    const tr = ev.target.closest('tr[data-alert-id]');
    if (tr) location.hash = `#/alerts/${tr.dataset.alertId}`;
  });
  tbody.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Enter' && ev.key !== ' ' && ev.key !== 'Spacebar') {
      if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
        const tr = ev.target.closest('tr[data-alert-id]');
        if (tr && ev.target === tr) {
          const next = ev.key === 'ArrowDown' ? tr.nextElementSibling : tr.previousElementSibling;
          if (next) {
            ev.preventDefault();
            next.focus();
          }
        }
      }
      return;
    }
    const tr = ev.target.closest('tr[data-alert-id]');
    if (!tr || ev.target !== tr) return; // buttons handle their own keys
    ev.preventDefault();
    location.hash = `#/alerts/${tr.dataset.alertId}`;
  });
  statusSel.addEventListener('change', async () => {
    view.status = statusSel.value;
    if ((view.status === 'resolved' || view.status === 'all') && !resolvedLoaded) await loadResolved();
    renderAll();
  });
  sevSel.addEventListener('change', () => {
    view.severity = sevSel.value;
    renderAll();
  });
  moreBtn.addEventListener('click', () => loadResolved(true));

  const unsub = store.subscribe((change) => {
    if (change.type === 'reset') {
      for (const tr of rows.values()) tr.remove();
      rows.clear();
      sync();
      return;
    }
    if (change.type === 'event') {
      const tr = rows.get(change.id);
      if (tr) fillRow(tr, change.alert);
      if (change.isNew && ACTIVE.has(change.alert.status) && visible(change.alert)) {
        const row = rowFor(change.alert);
        row.classList.add('just-arrived');
        setTimeout(() => row.classList.remove('just-arrived'), 6000);
      }
      sync();
      return;
    }
    renderAll();
  });

  // "5 min ago" stays current.
  const tick = setInterval(() => {
    for (const el of tbody.querySelectorAll('.ago[data-ts]')) el.textContent = fmtAgo(el.dataset.ts);
  }, 30000);

  msg.textContent = 'Loading alerts…';
  loadActive().then(() => {
    msg.textContent = '';
    renderAll();
  }).catch((e) => {
    if (!(e instanceof ApiError && e.status === 401)) msg.textContent = `Could not load alerts: ${errorText(e)}`;
  });
  if (store.isLoaded()) renderAll();
  ctx.focusTitle(title);

  return () => {
    unsub();
    clearInterval(tick);
  };
}
