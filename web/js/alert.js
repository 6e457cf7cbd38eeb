// Alert detail: the zone as it was, evidence with accuracy circles, the
// track around the event, and the officer's decisions.

import {
  h, clear, badge, kindLabel, humanize, timeEl, fmtTime, fmtMetres, fmtCoord, announce, OUTCOMES, outcomeLabel,
} from './dom.js';
import { get, post, errorText, ApiError } from './api.js';
import { field, errorRegion, statusRegion, onSubmit, localProblem, showProblem, clearProblem } from './forms.js';
import { createMap, zoneLayer, evidenceLayer, trackLayer, legend } from './map.js';
import * as store from './store.js';

const HALF_HOUR = 30 * 60 * 1000;

export function renderAlert(main, ctx, alertId) {
  let disposed = false;
  let mapHandle = null;
  let detail = null;
  let tz = null;
  let supervisee = null;
  let ownActionAt = 0;
  let unsub = null;

  clear(main);
  const title = h('h1', { id: 'page-title', tabindex: '-1', text: `Alert ${alertId}` });
  const msg = h('p', { class: 'page-message', role: 'status', text: 'Loading alert…' });
  main.append(h('section', { class: 'page', 'aria-labelledby': 'page-title' },
    h('p', { class: 'breadcrumb' }, h('a', { href: '#/', text: '← Alert queue' })), title, msg));
  ctx.focusTitle(title);

  async function load() {
    try {
      detail = await get(`/alerts/${alertId}`, { reason: `Reviewing alert ${alertId}` });
    } catch (e) {
      if (disposed || (e instanceof ApiError && e.status === 401)) return;
      msg.textContent = e instanceof ApiError && e.status === 404
        ? 'This alert does not exist or is not in your caseload.'
        : `Could not load the alert: ${errorText(e)}`;
      return;
    }
    if (disposed) return;
    store.upsertMany([detail]);
    if (detail.supervisee_id !== null && detail.supervisee_id !== undefined) {
      try {
        supervisee = await get(`/supervisees/${detail.supervisee_id}`);
        tz = supervisee.time_zone;
      } catch (e) {
        supervisee = null;
      }
    }
    if (disposed) return;
    build();
  }

  // ---------- page ----------
  let statusEl; let ackBtn; let resolveFieldset; let historyEl; let escEl; let liveNote; let factsEl; let flagsEl;

  function build() {
    if (mapHandle) {
      mapHandle.dispose();
      mapHandle = null;
    }
    clear(main);
    title.textContent = kindLabel(detail.kind);
    flagsEl = h('span', { class: 'flags' });
    statusEl = h('span', { id: 'alert-status', class: 'badge badge-status', 'aria-label': 'Status' });
    const head = h('div', { class: 'detail-head' },
      h('p', { class: 'breadcrumb' }, h('a', { href: '#/', text: '← Alert queue' })),
      h('div', { class: 'title-row' }, title,
        h('span', { class: 'badges' },
          badge('severity', detail.severity), badge('confidence', detail.confidence), statusEl, flagsEl)),
      h('p', { id: 'alert-explanation', class: 'explanation', text: detail.explanation || '' }));
    liveNote = h('div', { class: 'live-note', role: 'status', hidden: true });

    // Map, with the evidence table as its text alternative.
    const mapEl = h('div', { id: 'map', class: 'map' });
    const trackInfo = h('p', { class: 'map-caption', id: 'track-info', text: 'Loading the track around the event…' });
    const mapSection = h('section', { class: 'card map-card', 'aria-labelledby': 'map-h' },
      h('h2', { id: 'map-h', text: 'Map' }),
      h('p', { class: 'hint', text: 'The zone as it was when the alert fired, the evidence fixes with their accuracy circles, and the track from 30 minutes before to 30 minutes after. The evidence table below lists the same positions.' }),
      mapEl, trackInfo);

    factsEl = h('dl', { class: 'facts' });
    const decide = buildDecisions();
    const side = h('div', { class: 'detail-side' },
      h('section', { class: 'card', 'aria-labelledby': 'facts-h' }, h('h2', { id: 'facts-h', text: 'Facts' }), factsEl),
      decide);

    const evidence = buildEvidence();
    const details = buildDetails();
    historyEl = h('ul', { id: 'history', class: 'history' });
    escEl = h('ul', { id: 'escalations', class: 'escalations' });

    main.append(h('section', { id: 'alert-detail', class: 'page page-alert', 'aria-labelledby': 'page-title', dataset: { alertId: detail.alert_id } },
      head, liveNote,
      h('div', { class: 'detail-grid' }, mapSection, side),
      evidence,
      details,
      h('div', { class: 'two-col' },
        h('section', { class: 'card', 'aria-labelledby': 'history-h' }, h('h2', { id: 'history-h', text: 'Decision history' }), historyEl),
        h('section', { class: 'card', 'aria-labelledby': 'esc-h' }, h('h2', { id: 'esc-h', text: 'Escalations' }), escEl))));
    refresh();
    ctx.focusTitle(title);
    drawMap(mapEl, trackInfo);
  }

  function refresh() {
    statusEl.textContent = detail.status;
    statusEl.className = `badge badge-status badge-status-${detail.status}`;
    clear(flagsEl);
    if (detail.late) flagsEl.append(badge('flag', 'late', 'Late data'));
    if (detail.escalated_at) flagsEl.append(badge('flag', 'escalated', 'Escalated'));
    if (detail.condition_ended_at) flagsEl.append(badge('flag', 'ended', 'Condition ended'));
    ackBtn.disabled = detail.status !== 'open';
    ackBtn.title = detail.status === 'open' ? '' : `Already ${detail.status}`;
    resolveFieldset.disabled = detail.status === 'resolved';
    fillFacts();
    fillHistory();
    fillEscalations();
  }

  function fact(label, ...value) {
    factsEl.append(h('dt', { text: label }), h('dd', {}, ...value));
  }

  function fillFacts() {
    clear(factsEl);
    if (detail.supervisee_id !== null && detail.supervisee_id !== undefined) {
      const name = supervisee && supervisee.display_name ? ` (${supervisee.display_name})` : '';
      fact('Supervisee', h('a', { href: `#/supervisees/${detail.supervisee_id}`, text: `${detail.case_ref || (supervisee && supervisee.case_ref) || `Supervisee ${detail.supervisee_id}`}${name}` }));
    }
    if (tz) fact('Their time zone', tz);
    fact('Device', detail.device_id || '—');
    fact('First evidence', timeEl(detail.started_at, tz, { seconds: true }));
    fact('Latest evidence', timeEl(detail.last_evidence_at, tz, { seconds: true }));
    fact('Raised', timeEl(detail.raised_at, tz, { seconds: true }));
    if (detail.condition_ended_at) fact('Condition ended', timeEl(detail.condition_ended_at, tz, { seconds: true }));
    if (detail.escalated_at) fact('Escalated', timeEl(detail.escalated_at, tz));
    fact('Observations', String(detail.evidence_count));
    if (detail.zone) fact('Zone', `${detail.zone.name} (${detail.zone.zone_ref}), version ${detail.zone.version}`);
    if (detail.late) fact('Note', 'Raised from late-arriving data: a record of the past, not a current situation.');
  }

  function fillHistory() {
    clear(historyEl);
    const actions = detail.actions || [];
    if (!actions.length) historyEl.append(h('li', { class: 'empty', text: 'No decisions or notes yet.' }));
    for (const a of actions) {
      const li = h('li', { class: `history-item action-${a.action}`, dataset: { action: a.action } },
        h('p', { class: 'history-head' },
          h('strong', { class: 'history-action', text: humanize(a.action) }),
          ' by ', h('span', { class: 'history-actor', text: a.actor }),
          ', ', timeEl(a.at, tz)),
        a.outcome ? h('p', { class: 'history-outcome' }, 'Outcome: ', h('span', { dataset: { outcome: a.outcome }, text: outcomeLabel(a.outcome) })) : null,
        a.note ? h('p', { class: 'history-note', text: a.note }) : null);
      historyEl.append(li);
    }
  }

  function fillEscalations() {
    clear(escEl);
    const list = detail.escalations || [];
    if (!list.length) escEl.append(h('li', { class: 'empty', text: 'Not escalated.' }));
    for (const e of list) {
      const to = e.to_officer_ref ? `supervisor ${e.to_officer_ref}` : e.to_group ? `group ${e.to_group}` : 'nobody named';
      escEl.append(h('li', {},
        h('p', {}, h('strong', { text: `Level ${e.level}` }), ` to ${to}, `, timeEl(e.at, tz)),
        h('p', { class: 'esc-reason', text: e.reason })));
    }
  }

  // ---------- decisions ----------
  function buildDecisions() {
    ackBtn = h('button', { id: 'acknowledge', type: 'button', class: 'primary', text: 'Acknowledge' });
    const ackErr = errorRegion('ack-error');
    ackBtn.addEventListener('click', async () => {
      ackBtn.disabled = true;
      clearProblem(null, ackErr);
      try {
        ownActionAt = Date.now();
        const d = await post(`/alerts/${alertId}/acknowledge`, undefined);
        apply(d, 'Alert acknowledged.');
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) return;
        showProblem(null, ackErr, e);
      }
      refresh();
    });

    const outcome = h('select', { id: 'outcome', required: true },
      h('option', { value: '', text: 'Choose an outcome…' }),
      OUTCOMES.map(([v, l]) => h('option', { value: v, text: l })));
    const note = h('textarea', { id: 'note', rows: 3, required: true, maxLength: 10000 });
    const resolveBtn = h('button', { id: 'resolve', type: 'submit', class: 'primary', text: 'Resolve' });
    const resErr = errorRegion('resolve-error');
    const resStatus = statusRegion('resolve-status');
    resolveFieldset = h('fieldset', {},
      h('legend', { text: 'Resolve' }),
      field('Outcome', outcome),
      field('Note (required): what was found and decided', note),
      resolveBtn);
    const resolveForm = h('form', { id: 'resolve-form', novalidate: true }, resolveFieldset, resErr, resStatus);
    onSubmit(resolveForm, resErr, resStatus, { outcome: 'outcome', note: 'note' }, async () => {
      if (!outcome.value) throw localProblem('outcome', 'choose an outcome');
      if (!note.value.trim()) throw localProblem('note', 'a note is required: say what was found and decided');
      ownActionAt = Date.now();
      const d = await post(`/alerts/${alertId}/resolve`, { outcome: outcome.value, note: note.value });
      note.value = '';
      apply(d, 'Alert resolved.');
      return `Resolved as “${outcomeLabel(d.outcome || outcome.value)}”.`;
    }, () => refresh());

    const newNote = h('textarea', { id: 'new-note', rows: 2, maxLength: 10000 });
    const noteBtn = h('button', { id: 'add-note', type: 'submit', text: 'Add note' });
    const noteErr = errorRegion('note-error');
    const noteStatus = statusRegion('note-status');
    const noteForm = h('form', { id: 'note-form', novalidate: true },
      h('fieldset', {}, h('legend', { text: 'Add a note' }), field('Note', newNote), noteBtn), noteErr, noteStatus);
    onSubmit(noteForm, noteErr, noteStatus, { note: 'new-note' }, async () => {
      if (!newNote.value.trim()) throw localProblem('note', 'write the note first');
      ownActionAt = Date.now();
      const d = await post(`/alerts/${alertId}/notes`, { note: newNote.value });
      newNote.value = '';
      apply(d, 'Note added.');
      return 'Note added.';
    }, () => refresh());

    return h('section', { class: 'card decide', 'aria-labelledby': 'decide-h' },
      h('h2', { id: 'decide-h', text: 'Decide' }),
      h('p', { class: 'hint', text: 'Nothing happens to the supervised person automatically: these record your decision.' }),
      h('div', { class: 'ack-row' }, ackBtn), ackErr,
      resolveForm, noteForm);
  }

  function apply(d, message) {
    detail = d;
    store.upsertMany([d]);
    liveNote.hidden = true;
    announce(message);
  }

  // ---------- evidence ----------
  function describeEvidence(e, i) {
    return [
      `Evidence ${i + 1}: ${e.observation}`,
      fmtTime(e.at, tz, { seconds: true }),
      e.acc_m !== null && e.acc_m !== undefined ? `Accuracy ±${fmtMetres(e.acc_m)}` : '',
      e.distance_m !== null && e.distance_m !== undefined ? `Distance ${fmtMetres(e.distance_m)}` : '',
      e.detail || '',
    ];
  }

  function buildEvidence() {
    const rows = (detail.evidence || []).map((e, i) => h('tr', {},
      h('td', { dataset: { label: '#' }, text: String(i + 1) }),
      h('td', { dataset: { label: 'Time' } }, timeEl(e.at, tz, { seconds: true })),
      h('td', { dataset: { label: 'Observation' } }, badge('observation', e.observation)),
      h('td', { dataset: { label: 'Latitude' }, text: fmtCoord(e.lat) }),
      h('td', { dataset: { label: 'Longitude' }, text: fmtCoord(e.lon) }),
      h('td', { dataset: { label: 'Accuracy' }, text: e.acc_m === null || e.acc_m === undefined ? '—' : `±${fmtMetres(e.acc_m)}` }),
      h('td', { dataset: { label: 'Distance' }, text: fmtMetres(e.distance_m) }),
      h('td', { dataset: { label: 'Detail' }, text: e.detail || '' })));
    const kept = (detail.evidence || []).length;
    const table = h('table', { id: 'evidence', class: 'data' },
      h('caption', { text: `Evidence: ${kept} kept of ${detail.evidence_count} observations${tz ? `. Times in your time zone; ${tz} in brackets.` : '.'}` }),
      h('thead', {}, h('tr', {}, ['#', 'Time', 'Observation', 'Latitude', 'Longitude', 'Accuracy', 'Distance to boundary', 'Detail'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colSpan: 8, text: 'No evidence kept.' }))));
    return h('section', { class: 'card', 'aria-labelledby': 'ev-h' },
      h('h2', { id: 'ev-h', text: 'Evidence' }), h('div', { class: 'table-wrap' }, table));
  }

  function buildDetails() {
    const d = detail.details;
    if (!d || typeof d !== 'object' || !Object.keys(d).length) return null;
    const dl = h('dl', { class: 'facts' });
    for (const [k, v] of Object.entries(d)) {
      dl.append(h('dt', { text: humanize(k) }), h('dd', { text: typeof v === 'object' ? JSON.stringify(v) : String(v) }));
    }
    return h('section', { class: 'card', 'aria-labelledby': 'details-h' }, h('h2', { id: 'details-h', text: 'Rule facts' }), dl);
  }

  // ---------- map ----------
  async function drawMap(mapEl, trackInfo) {
    try {
      mapHandle = await createMap(mapEl, `Map of alert ${detail.alert_id}: zone, evidence and track. The evidence table lists the same positions.`);
    } catch (e) {
      trackInfo.textContent = `The map is unavailable: ${e.message}. The evidence table lists the positions.`;
      return;
    }
    if (disposed) {
      mapHandle.dispose();
      return;
    }
    const { map, L } = mapHandle;
    const layers = [];
    if (detail.zone && detail.zone.geojson) {
      const z = zoneLayer(L, map, detail.zone.geojson, { name: `${detail.zone.name} (version ${detail.zone.version})`, role: roleOfKind(detail.kind) });
      z.addTo(map);
      layers.push(z);
    }
    const ev = evidenceLayer(L, detail.evidence || [], describeEvidence);
    ev.addTo(map);
    layers.push(ev);
    legend(L, [['sw-zone', 'Zone at the time'], ['sw-evidence', 'Evidence fix and accuracy'], ['sw-track', 'Track ±30 min']]).addTo(map);
    mapHandle.fit(layers);

    if (detail.supervisee_id === null || detail.supervisee_id === undefined) {
      trackInfo.textContent = 'No supervisee is linked to this alert, so there is no track.';
      return;
    }
    const from = new Date(new Date(detail.started_at).getTime() - HALF_HOUR);
    let to = new Date(new Date(detail.last_evidence_at).getTime() + HALF_HOUR);
    if (to <= from) to = new Date(from.getTime() + 2 * HALF_HOUR);
    try {
      const track = await get(`/supervisees/${detail.supervisee_id}/track`, {
        query: { from: from.toISOString(), to: to.toISOString(), bucket: '30s' },
        reason: `Reviewing alert ${alertId}`,
      });
      if (disposed) return;
      const fixes = track.fixes || [];
      if (fixes.length) {
        const t = trackLayer(L, fixes);
        t.addTo(map);
        ev.bringToFront();
        layers.push(t);
        mapHandle.fit(layers);
      }
      trackInfo.textContent = fixes.length
        ? `Track: ${fixes.length} fixes (one per 30 s at most) from ${fmtTime(from, tz)} to ${fmtTime(to, tz)}.`
        : `No fixes recorded from ${fmtTime(from, tz)} to ${fmtTime(to, tz)}.`;
    } catch (e) {
      if (disposed || (e instanceof ApiError && e.status === 401)) return;
      trackInfo.textContent = `The track could not be loaded: ${errorText(e)}`;
    }
  }

  // ---------- live ----------
  unsub = store.subscribe((change) => {
    if (!detail || change.type !== 'event' || change.id !== Number(alertId)) return;
    const a = change.alert;
    const statusChanged = a.status !== detail.status;
    // Summary fields can be taken from the event; decisions need a reload.
    detail = { ...detail, status: a.status, escalated_at: a.escalated_at, condition_ended_at: a.condition_ended_at, evidence_count: a.evidence_count, last_evidence_at: a.last_evidence_at };
    refresh();
    if (Date.now() - ownActionAt < 5000 && ['acknowledged', 'resolved', 'note'].includes(change.eventType)) return;
    const what = {
      acknowledged: 'acknowledged', resolved: 'resolved', note: 'given a note', escalated: 'escalated',
      updated: 'updated with new evidence', condition_ended: 'marked: condition ended',
    }[change.eventType] || humanize(change.eventType);
    clear(liveNote);
    const reload = h('button', { type: 'button', class: 'secondary', text: 'Reload details' });
    reload.addEventListener('click', () => {
      liveNote.hidden = true;
      load();
    });
    liveNote.append(h('span', { text: `This alert was just ${what}${change.at ? ` (${fmtTime(change.at, tz)})` : ''}. ` }), reload);
    liveNote.hidden = false;
    if (statusChanged) announce(`Alert ${alertId} is now ${a.status}.`);
  });

  load();

  return () => {
    disposed = true;
    if (unsub) unsub();
    if (mapHandle) mapHandle.dispose();
  };
}

function roleOfKind(kind) {
  if (kind === 'exclusion_zone_entry') return 'exclusion';
  if (kind === 'inclusion_zone_exit') return 'inclusion';
  if (kind === 'curfew_violation') return 'home';
  return null;
}
