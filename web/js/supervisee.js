// Supervisee page: latest position, today's schedule, approved absences,
// track replay over a chosen period, compliance progress.

import {
  h, clear, badge, kindLabel, timeEl, fmtTime, fmtDateInZone, fmtMetres, fmtCoord, fmtDuration, fmtAgo,
  toLocalInput, fromLocalInput, announce,
} from './dom.js';
import { get, errorText, ApiError } from './api.js';
import { field, errorRegion, onSubmit, localProblem } from './forms.js';
import { createMap, zoneLayer, trackLayer, positionLayer, legend, tip } from './map.js';
import { todaysWindows, coveringExceptions, describeWindow } from './schedule.js';
import { exceptionsWidget } from './exceptions.js';

const STALE_S = 15 * 60;
const MAX_SPAN_MS = 31 * 86400 * 1000;

function autoBucket(ms) {
  if (ms <= 3 * 3600 * 1000) return '';
  if (ms <= 2 * 86400 * 1000) return '30s';
  if (ms <= 10 * 86400 * 1000) return '5m';
  return '1h';
}

export function renderSupervisee(main, ctx, sid) {
  let disposed = false;
  let mapHandle = null;
  let sv = null;
  let tz = null;
  let rules = [];
  let exceptions = [];
  let playTimer = null;
  const layers = { zones: null, rulesZones: null, track: null, position: null, replay: null };
  let fixes = [];

  clear(main);
  const title = h('h1', { id: 'page-title', tabindex: '-1', text: `Supervisee ${sid}` });
  const msg = h('p', { class: 'page-message', role: 'status', text: 'Loading…' });
  const root = h('section', { id: 'supervisee', class: 'page page-supervisee', 'aria-labelledby': 'page-title', dataset: { superviseeId: sid } },
    h('p', { class: 'breadcrumb' }, h('a', { href: '#/', text: '← Alert queue' }), ' · ', h('a', { href: '#/caseload', text: 'Caseload' })),
    title, msg);
  main.append(root);
  ctx.focusTitle(title);

  // ---------- skeleton (ids exist from the start) ----------
  const facts = h('dl', { class: 'facts' });
  const latest = h('div', { id: 'latest-position', class: 'latest', 'aria-live': 'polite' }, h('p', { text: 'Loading the latest position…' }));
  const schedule = h('div', { id: 'schedule', class: 'schedule' }, h('p', { text: 'Loading rules…' }));
  const compliance = h('div', { id: 'compliance', class: 'compliance' }, h('p', { text: 'Loading compliance…' }));
  const mapEl = h('div', { id: 'map', class: 'map' });
  const mapCaption = h('p', { class: 'map-caption', id: 'map-caption' });

  const now = new Date();
  now.setSeconds(0, 0);
  const trackFrom = h('input', { id: 'track-from', type: 'datetime-local', required: true, value: toLocalInput(new Date(now.getTime() - 24 * 3600 * 1000)) });
  const trackTo = h('input', { id: 'track-to', type: 'datetime-local', required: true, value: toLocalInput(now) });
  const bucketSel = h('select', { id: 'track-bucket' },
    h('option', { value: 'auto', text: 'Automatic' }),
    h('option', { value: '', text: 'Every fix' }),
    h('option', { value: '30s', text: 'One per 30 s' }),
    h('option', { value: '5m', text: 'One per 5 min' }),
    h('option', { value: '1h', text: 'One per hour' }));
  const loadBtn = h('button', { id: 'load-track', type: 'submit', class: 'primary', text: 'Load track' });
  const trackErr = errorRegion('track-error');
  const trackForm = h('form', { id: 'track-form', class: 'track-form', novalidate: true },
    h('div', { class: 'field-row' }, field('From', trackFrom), field('To', trackTo), field('Detail', bucketSel)),
    loadBtn, trackErr);
  const replay = h('input', { id: 'replay', type: 'range', min: 0, max: 0, step: 1, value: 0, disabled: true });
  const playBtn = h('button', { id: 'replay-play', type: 'button', class: 'secondary', disabled: true, text: 'Play' });
  const replayOut = h('output', { id: 'replay-time', for: 'replay', class: 'replay-readout', text: 'Load a track to replay it.' });
  const replayBox = h('div', { class: 'replay' },
    h('label', { for: 'replay', text: 'Replay position' }), replay, playBtn, replayOut);
  const trackSummary = h('p', { class: 'hint', id: 'track-summary', role: 'status' });

  const compDays = h('select', { id: 'compliance-days' },
    [7, 30, 90].map((d) => h('option', { value: String(d), text: `Last ${d} days`, selected: d === 30 })));

  const exc = exceptionsWidget(
    { start: 'sv-exc-start', end: 'sv-exc-end', reason: 'sv-exc-reason', rule: 'sv-exc-rule', save: 'sv-save-exception', list: 'exceptions' },
    { role: ctx.session.role, onChange: (list) => { exceptions = list; renderSchedule(); } },
  );
  const alertsList = h('ul', { class: 'alert-links', id: 'supervisee-alerts' });

  function build() {
    clear(root);
    const label = sv.display_name ? `${sv.case_ref} — ${sv.display_name}` : sv.case_ref;
    title.textContent = label;
    root.append(
      h('p', { class: 'breadcrumb' }, h('a', { href: '#/', text: '← Alert queue' }), ' · ', h('a', { href: '#/caseload', text: 'Caseload' })),
      h('div', { class: 'title-row' }, title, h('span', { class: 'tz-note', text: `Their time zone: ${tz}` })),
      h('div', { class: 'detail-grid' },
        h('section', { class: 'card map-card', 'aria-labelledby': 'svmap-h' },
          h('h2', { id: 'svmap-h', text: 'Map and track replay' }),
          trackForm, mapEl, mapCaption, replayBox, trackSummary),
        h('div', { class: 'detail-side' },
          h('section', { class: 'card', 'aria-labelledby': 'latest-h' }, h('h2', { id: 'latest-h', text: 'Latest position' }), latest),
          h('section', { class: 'card', 'aria-labelledby': 'sched-h' }, h('h2', { id: 'sched-h', text: 'Today’s schedule' }), schedule),
          h('section', { class: 'card', 'aria-labelledby': 'facts-h' }, h('h2', { id: 'facts-h', text: 'Record' }), facts))),
      h('div', { class: 'two-col' },
        h('section', { class: 'card', 'aria-labelledby': 'comp-h' },
          h('div', { class: 'card-head' }, h('h2', { id: 'comp-h', text: 'Compliance progress' }),
            h('div', { class: 'field inline' }, h('label', { for: 'compliance-days', text: 'Period' }), compDays)),
          compliance),
        h('section', { class: 'card', 'aria-labelledby': 'exc-h' }, h('h2', { id: 'exc-h', text: 'Approved absences' }), exc.element)),
      h('section', { class: 'card', 'aria-labelledby': 'svalerts-h' }, h('h2', { id: 'svalerts-h', text: 'Recent alerts' }), alertsList));
    fillFacts();
  }

  function fillFacts() {
    clear(facts);
    const add = (k, ...v) => facts.append(h('dt', { text: k }), h('dd', {}, ...v));
    add('Case reference', sv.case_ref);
    if (sv.display_name) add('Name', sv.display_name);
    add('Time zone', tz);
    if (sv.officer_ref) add('Officer', sv.officer_ref);
    const devs = sv.devices || [];
    add('Devices', devs.length
      ? h('ul', { class: 'plain' }, devs.map((d) => h('li', {}, `${d.device_id} from `, timeEl(d.valid_from, tz), d.valid_to ? h('span', {}, ' until ', timeEl(d.valid_to, tz)) : ' (open-ended)')))
      : 'None assigned');
    if (sv.victim_pairings) add('Victim pairings', `${sv.victim_pairings} (proximity alerts; victims are not identified)`);
  }

  // ---------- data ----------
  async function load() {
    try {
      sv = await get(`/supervisees/${sid}`);
    } catch (e) {
      if (disposed || (e instanceof ApiError && e.status === 401)) return;
      msg.textContent = e instanceof ApiError && e.status === 404 ? 'This supervisee does not exist or is not in your caseload.' : `Could not load: ${errorText(e)}`;
      return;
    }
    if (disposed) return;
    tz = sv.time_zone || 'UTC';
    build();
    await initMap();
    loadRules();
    loadPosition();
    loadCompliance();
    loadAlerts();
  }

  async function initMap() {
    try {
      mapHandle = await createMap(mapEl, `Map of ${sv.case_ref}: latest position, zones and track. The text beside the map gives the same information.`);
    } catch (e) {
      mapCaption.textContent = `The map is unavailable: ${e.message}.`;
      return;
    }
    if (disposed) {
      mapHandle.dispose();
      mapHandle = null;
      return;
    }
    legend(mapHandle.L, [['sw-zone', 'Zone'], ['sw-position', 'Latest position and accuracy'], ['sw-track', 'Track'], ['sw-replay', 'Replay position']]).addTo(mapHandle.map);
  }

  function refit() {
    if (!mapHandle) return;
    const list = [layers.track, layers.position, layers.zones, layers.rulesZones].filter(Boolean);
    // Fit to what matters most: the track if loaded, else position and zones.
    if (layers.track) mapHandle.fit([layers.track, layers.zones]);
    else mapHandle.fit(list);
  }

  async function loadRules() {
    try {
      rules = await get(`/supervisees/${sid}/rules`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      clear(schedule).append(h('p', { text: `Could not load rules: ${errorText(e)}` }));
      rules = [];
    }
    if (disposed) return;
    await exc.load(Number(sid), tz, rules);
    exceptions = exc.items();
    renderSchedule();
    drawRuleZones();
  }

  async function drawRuleZones() {
    if (!mapHandle) return;
    const { L, map } = mapHandle;
    const group = L.featureGroup();
    const seen = new Set();
    for (const r of rules.filter((x) => !x.retired && x.zone)) {
      if (seen.has(r.zone.zone_id)) continue;
      seen.add(r.zone.zone_id);
      try {
        const f = await get(`/zones/${r.zone.zone_id}`);
        if (disposed) return;
        group.addLayer(zoneLayer(L, map, f, { role: r.role, name: `${r.zone.name} (current version ${f.properties ? f.properties.version : ''})` }));
      } catch (_) { /* a zone we cannot read is left out */ }
    }
    if (!mapHandle) return;
    layers.rulesZones = group;
    if (!layers.track) {
      group.addTo(map);
      refit();
    }
  }

  function renderSchedule() {
    if (!tz) return;
    clear(schedule);
    const t = todaysWindows(rules, tz);
    const dateText = fmtDateInZone(new Date(), tz);
    schedule.append(h('p', { class: 'hint', text: `Today in ${tz}: ${dateText}. Times below are yours, with theirs in brackets.` }));
    if (!rules.filter((r) => !r.retired).length) {
      schedule.append(h('p', { text: 'No rules in force.' }));
      return;
    }
    const ul = h('ul', { class: 'windows' });
    const nowD = new Date();
    for (const w of t.windows) {
      const r = w.rule;
      const zone = r.zone ? r.zone.name : r.list_ref ? `list ${r.list_ref}` : '';
      const state = nowD >= w.end ? 'over' : nowD >= w.start ? 'in progress' : 'later today';
      const cover = coveringExceptions(exceptions, r.rule_id, w.start, w.end);
      const li = h('li', { class: `window state-${state.replace(' ', '-')}` },
        h('p', {}, h('strong', { text: roleLabel(r.role) }), zone ? `: ${zone}` : ''),
        w.always
          ? h('p', { text: 'In force all day (no schedule).' })
          : h('p', {},
            `${fmtTime(w.start, tz, { date: !sameLocalDay(w.start, nowD) })} – ${fmtTime(w.end, tz, { date: !sameLocalDay(w.end, w.start) })}`,
            w.fromYesterday ? ' (started yesterday)' : ''),
        w.always ? null : h('p', { class: 'hint' }, badge('window', state.replace(' ', '_'), state), ` ${describeWindow(w.window)}`),
        cover.length ? h('p', { class: 'suspended', text: `Suspended by an approved absence: ${cover.map((x) => x.reason).join('; ')}` }) : null);
      ul.append(li);
    }
    if (!t.windows.length) schedule.append(h('p', { text: 'No schedule windows today.' }));
    else schedule.append(ul);
    const retired = rules.filter((r) => r.retired).length;
    if (retired) schedule.append(h('p', { class: 'hint', text: `${retired} retired rule${retired > 1 ? 's' : ''} not shown.` }));
  }

  async function loadPosition() {
    let p;
    try {
      p = await get(`/supervisees/${sid}/position`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      clear(latest).append(h('p', { text: `Could not load the position: ${errorText(e)}` }));
      return;
    }
    if (disposed) return;
    clear(latest);
    if (p.lat === null || p.lat === undefined || p.lon === null || p.lon === undefined) {
      latest.append(h('p', { text: 'No position: no device currently assigned to them has reported a fix.' }));
      return;
    }
    const stale = p.age_s !== null && p.age_s !== undefined && p.age_s > STALE_S;
    if (stale) latest.append(h('p', { class: 'warning', text: `Stale: this fix is ${fmtDuration(p.age_s)} old. Do not read it as where they are now.` }));
    latest.append(
      h('dl', { class: 'facts' },
        h('dt', { text: 'Fix time' }), h('dd', {}, timeEl(p.fix_time, tz, { seconds: true }), p.age_s !== null && p.age_s !== undefined ? ` (${fmtDuration(p.age_s, true)})` : ''),
        h('dt', { text: 'Position' }), h('dd', { text: `${fmtCoord(p.lat)}, ${fmtCoord(p.lon)}` }),
        h('dt', { text: 'Accuracy' }), h('dd', { text: p.acc_m === null || p.acc_m === undefined ? '—' : `±${fmtMetres(p.acc_m)}` }),
        h('dt', { text: 'Device' }), h('dd', { text: p.device_id || '—' })));
    if (mapHandle) {
      const { L, map } = mapHandle;
      layers.position = positionLayer(L, p.lat, p.lon, p.acc_m, [`Latest position`, fmtTime(p.fix_time, tz), p.acc_m ? `±${fmtMetres(p.acc_m)}` : '']);
      layers.position.addTo(map);
      refit();
    }
  }

  async function loadCompliance() {
    let c;
    try {
      c = await get(`/supervisees/${sid}/compliance`, { query: { days: compDays.value } });
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      clear(compliance).append(h('p', { text: `Could not load compliance: ${errorText(e)}` }));
      return;
    }
    if (disposed) return;
    clear(compliance);
    const prog = (id, label, value, max) => h('div', { class: 'progress-row' },
      h('label', { for: id, text: `${label}: ${value} of ${max}` }),
      h('progress', { id, max: Math.max(1, max), value: Math.min(value, Math.max(1, max)) }));
    const eq = c.equipment_care || {};
    compliance.append(
      h('p', { class: 'summary', text: c.summary }),
      prog('comp-days', 'Monitored days without violations', c.days_without_violations, c.monitored_days),
      prog('comp-curfew', 'Curfew nights kept', c.curfew_nights_kept, c.curfew_nights_observed),
      h('dl', { class: 'facts compact' },
        h('dt', { text: 'Current streak' }), h('dd', { text: `${c.current_streak_days} day${c.current_streak_days === 1 ? '' : 's'}` }),
        h('dt', { text: 'Days monitored' }), h('dd', { text: `${c.monitored_days} of ${c.days}` }),
        h('dt', { text: 'Days without equipment alerts' }), h('dd', { text: String(eq.days_without_equipment_alerts ?? '—') }),
        h('dt', { text: 'Battery alerts' }), h('dd', { text: String(eq.battery_alerts ?? '—') }),
        h('dt', { text: 'No-signal alerts' }), h('dd', { text: String(eq.no_signal_alerts ?? '—') })));
    const days = c.daily || [];
    if (days.length) {
      const strip = h('ol', { class: 'day-strip', 'aria-label': `Day by day, oldest first, in ${c.time_zone}` });
      for (const d of days) {
        const state = !d.monitored ? 'unmonitored' : d.violations > 0 ? 'violation' : d.equipment_alerts > 0 ? 'equipment' : 'ok';
        const text = `${d.date}: ${!d.monitored ? 'not monitored' : d.violations ? `${d.violations} violation${d.violations > 1 ? 's' : ''}` : 'no violations'}`
          + `${d.equipment_alerts ? `, ${d.equipment_alerts} equipment alert${d.equipment_alerts > 1 ? 's' : ''}` : ''}`
          + `${d.curfew_kept === true ? ', curfew kept' : d.curfew_kept === false ? ', curfew not kept' : ''}`;
        strip.append(h('li', { class: `day day-${state}`, title: text }, h('span', { class: 'sr-only', text })));
      }
      compliance.append(h('div', { class: 'strip-wrap' }, strip,
        h('p', { class: 'hint strip-legend' },
          h('span', { class: 'key day-ok' }), ' no violations ', h('span', { class: 'key day-violation' }), ' violation ',
          h('span', { class: 'key day-equipment' }), ' equipment alert ', h('span', { class: 'key day-unmonitored' }), ' not monitored')));
    }
  }

  async function loadAlerts() {
    try {
      const page = await get('/alerts', { query: { supervisee_id: sid, limit: 20 } });
      if (disposed) return;
      clear(alertsList);
      if (!page.items.length) alertsList.append(h('li', { class: 'empty', text: 'No alerts.' }));
      for (const a of page.items) {
        alertsList.append(h('li', {},
          h('a', { href: `#/alerts/${a.alert_id}`, text: kindLabel(a.kind) }), ' ',
          badge('severity', a.severity), ' ', badge('status', a.status), ' ',
          timeEl(a.raised_at, tz), h('span', { class: 'hint', text: ` ${fmtAgo(a.raised_at)}` })));
      }
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) clear(alertsList).append(h('li', { text: `Could not load alerts: ${errorText(e)}` }));
    }
  }

  // ---------- track + replay ----------
  onSubmit(trackForm, trackErr, null, { from: 'track-from', to: 'track-to', bucket: 'track-bucket' }, async () => {
    const from = fromLocalInput(trackFrom.value);
    const to = fromLocalInput(trackTo.value);
    if (!from) throw localProblem('from', 'enter a start date and time');
    if (!to) throw localProblem('to', 'enter an end date and time');
    if (to <= from) throw localProblem('to', 'must be after the start');
    if (to - from > MAX_SPAN_MS) throw localProblem('to', 'at most 31 days after the start');
    const bucket = bucketSel.value === 'auto' ? autoBucket(to - from) : bucketSel.value;
    stopPlay();
    const track = await get(`/supervisees/${sid}/track`, { query: { from: from.toISOString(), to: to.toISOString(), bucket: bucket || undefined } });
    if (disposed) return null;
    showTrack(track, from, to, bucket);
    return null;
  });

  function showTrack(track, from, to, bucket) {
    fixes = track.fixes || [];
    if (!mapHandle) return;
    const { L, map } = mapHandle;
    for (const k of ['track', 'zones', 'replay']) {
      if (layers[k]) {
        map.removeLayer(layers[k]);
        layers[k] = null;
      }
    }
    if (layers.rulesZones) map.removeLayer(layers.rulesZones);
    const zones = L.featureGroup();
    for (const z of track.zones_in_force || []) {
      const period = `v${z.version}: ${fmtTime(z.valid_from, tz)}${z.valid_to ? ` – ${fmtTime(z.valid_to, tz)}` : ' onwards'}`;
      zones.addLayer(zoneLayer(L, map, z.geojson, { role: z.role, name: `${z.name} (${period})`, extraClass: z.valid_to ? 'zone-superseded' : '' }));
    }
    zones.addTo(map);
    layers.zones = zones;
    if (fixes.length) {
      layers.track = trackLayer(L, fixes);
      layers.track.addTo(map);
      const marker = L.circleMarker([fixes[0].lat, fixes[0].lon], { className: 'replay-marker', radius: 8, color: '#000', weight: 2, fillColor: '#ffd400', fillOpacity: 1 });
      const acc = L.circle([fixes[0].lat, fixes[0].lon], { className: 'replay-accuracy', radius: fixes[0].acc_m || 0, color: '#8a6d00', weight: 1, fillOpacity: 0.1, interactive: false });
      layers.replay = L.featureGroup([acc, marker]).addTo(map);
      layers.replay.marker = marker;
      layers.replay.acc = acc;
    }
    refit();
    replay.max = String(Math.max(0, fixes.length - 1));
    replay.value = '0';
    replay.disabled = fixes.length === 0;
    playBtn.disabled = fixes.length < 2;
    const zn = (track.zones_in_force || []).length;
    trackSummary.textContent = fixes.length
      ? `${fixes.length} fixes from ${fmtTime(from, tz)} to ${fmtTime(to, tz)}${bucket ? ` (at most one per ${bucket})` : ''}; ${zn} zone version${zn === 1 ? '' : 's'} in force.`
      : `No fixes from ${fmtTime(from, tz)} to ${fmtTime(to, tz)}.`;
    mapCaption.textContent = '';
    moveReplay(0);
  }

  function moveReplay(i) {
    const f = fixes[i];
    if (!f) {
      replayOut.textContent = fixes.length ? '' : 'No fixes to replay.';
      replay.removeAttribute('aria-valuetext');
      return;
    }
    if (layers.replay) {
      layers.replay.marker.setLatLng([f.lat, f.lon]);
      layers.replay.acc.setLatLng([f.lat, f.lon]);
      layers.replay.acc.setRadius(f.acc_m || 0);
      layers.replay.marker.unbindTooltip();
      layers.replay.marker.bindTooltip(tip([fmtTime(f.t, tz, { seconds: true })]));
    }
    const speed = f.speed_mps !== null && f.speed_mps !== undefined ? `, ${(f.speed_mps * 3.6).toFixed(1)} km/h` : '';
    const text = `${fmtTime(f.t, tz, { seconds: true })}: ${fmtCoord(f.lat)}, ${fmtCoord(f.lon)} ±${fmtMetres(f.acc_m)}${speed} (fix ${i + 1} of ${fixes.length})`;
    replayOut.textContent = text;
    replay.setAttribute('aria-valuetext', text);
  }

  function stopPlay() {
    if (playTimer) clearInterval(playTimer);
    playTimer = null;
    playBtn.textContent = 'Play';
    playBtn.setAttribute('aria-pressed', 'false');
  }

  replay.addEventListener('input', () => moveReplay(Number(replay.value)));
  playBtn.addEventListener('click', () => {
    if (playTimer) {
      stopPlay();
      return;
    }
    if (Number(replay.value) >= fixes.length - 1) replay.value = '0';
    const step = Math.max(1, Math.round(fixes.length / 400));
    playBtn.textContent = 'Pause';
    playBtn.setAttribute('aria-pressed', 'true');
    playTimer = setInterval(() => {
      const next = Math.min(fixes.length - 1, Number(replay.value) + step);
      replay.value = String(next);
      moveReplay(next);
      if (next >= fixes.length - 1) {
        stopPlay();
        announce('Replay finished.');
      }
    }, 50);
  });
  compDays.addEventListener('change', loadCompliance);

  // Today's windows move from "later" to "in progress": refresh each minute.
  const tick = setInterval(() => { if (sv) renderSchedule(); }, 60000);

  load();

  return () => {
    disposed = true;
    stopPlay();
    clearInterval(tick);
    if (mapHandle) mapHandle.dispose();
    mapHandle = null;
  };
}

function sameLocalDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

function roleLabel(role) {
  return { home: 'Home (curfew)', inclusion: 'Inclusion: must stay inside', exclusion: 'Exclusion: must stay out' }[role] || role;
}
