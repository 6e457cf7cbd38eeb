// Admin page: enroll devices (and assign them), create zones (upload
// GeoJSON or draw a polygon on the map), create rules with schedules,
// approve and cancel absences.

import { h, clear, badge, timeEl, fromLocalInput, toLocalInput, announce, humanize } from './dom.js';
import { get, post, errorText, ApiError } from './api.js';
import { field, errorRegion, statusRegion, onSubmit, localProblem, showProblem } from './forms.js';
import { createMap, zoneLayer, tip } from './map.js';
import { DAY_NAMES, DAY_LABELS, scheduleProblem, describeWindow } from './schedule.js';
import { exceptionsWidget } from './exceptions.js';

export function renderAdmin(main, ctx) {
  let disposed = false;
  let mapHandle = null;
  let previewLayer = null;
  let existingLayer = null;
  let supervisees = [];
  let zones = [];
  let rules = [];
  const draw = { active: false, points: [], layer: null };

  clear(main);
  const title = h('h1', { id: 'page-title', tabindex: '-1', text: 'Administration' });

  // ---------- devices ----------
  const deviceId = h('input', { id: 'device-id', type: 'text', required: true, autocomplete: 'off', spellcheck: false, maxLength: 64 });
  const interval = h('input', { id: 'report-interval', type: 'number', min: 1, max: 86400, step: 1, value: '60' });
  const enrollBtn = h('button', { id: 'enroll', type: 'submit', class: 'primary', text: 'Enroll device' });
  const enrollErr = errorRegion('enroll-error');
  const enrollStatus = statusRegion('enroll-status');
  const enrollForm = h('form', { id: 'enroll-form', novalidate: true },
    h('div', { class: 'field-row' },
      field('Device id', deviceId, 'As in its MQTT topic: letters, digits, dot, underscore, hyphen.'),
      field('Reporting interval (seconds)', interval, 'No-signal alerts are a multiple of it.')),
    enrollBtn, enrollErr, enrollStatus);
  const devicesList = h('ul', { class: 'plain device-list', id: 'device-list' });

  onSubmit(enrollForm, enrollErr, enrollStatus, { device_id: 'device-id', report_interval_s: 'report-interval' }, async () => {
    const id = deviceId.value.trim();
    if (!id) throw localProblem('device_id', 'enter the device id');
    const body = { device_id: id };
    if (interval.value !== '') {
      const n = Number(interval.value);
      if (!Number.isInteger(n) || n < 1 || n > 86400) throw localProblem('report_interval_s', 'a whole number of seconds, 1 to 86400');
      body.report_interval_s = n;
    }
    const d = await post('/devices', body);
    deviceId.value = '';
    loadDevices();
    announce(`Device ${d.device_id} enrolled.`);
    return `Device ${d.device_id} enrolled (reports every ${d.report_interval_s} s).`;
  });

  // Assignment of a device to a supervisee.
  const asgDevice = h('input', { id: 'assign-device', type: 'text', required: true, autocomplete: 'off', spellcheck: false });
  const asgSup = h('select', { id: 'assign-supervisee', required: true });
  const asgFrom = h('input', { id: 'assign-from', type: 'datetime-local', required: true, value: toLocalInput(new Date()) });
  const asgTo = h('input', { id: 'assign-to', type: 'datetime-local' });
  const asgErr = errorRegion('assign-error');
  const asgStatus = statusRegion('assign-status');
  const asgForm = h('form', { id: 'assign-form', novalidate: true },
    h('div', { class: 'field-row' }, field('Device id', asgDevice), field('Supervisee', asgSup)),
    h('div', { class: 'field-row' }, field('From', asgFrom), field('Until (optional)', asgTo)),
    h('button', { id: 'assign', type: 'submit', text: 'Assign device' }), asgErr, asgStatus);
  onSubmit(asgForm, asgErr, asgStatus, { supervisee_id: 'assign-supervisee', valid_from: 'assign-from', valid_to: 'assign-to', device_id: 'assign-device' }, async () => {
    const dev = asgDevice.value.trim();
    if (!dev) throw localProblem('device_id', 'enter the device id');
    if (!asgSup.value) throw localProblem('supervisee_id', 'choose a supervisee');
    const from = fromLocalInput(asgFrom.value);
    if (!from) throw localProblem('valid_from', 'enter a start');
    const body = { supervisee_id: Number(asgSup.value), valid_from: from.toISOString() };
    if (asgTo.value) {
      const to = fromLocalInput(asgTo.value);
      if (!to || to <= from) throw localProblem('valid_to', 'must be after the start');
      body.valid_to = to.toISOString();
    }
    await post(`/devices/${encodeURIComponent(dev)}/assignments`, body);
    loadDevices();
    return `Device ${dev} assigned.`;
  });

  // ---------- zones ----------
  const zoneRef = h('input', { id: 'zone-ref', type: 'text', required: true, autocomplete: 'off', maxLength: 128 });
  const zoneName = h('input', { id: 'zone-name', type: 'text', required: true, autocomplete: 'off', maxLength: 200 });
  const zoneList = h('input', { id: 'zone-list-ref', type: 'text', autocomplete: 'off' });
  const zoneFile = h('input', { id: 'zone-file', type: 'file', accept: '.geojson,.json,application/geo+json,application/json' });
  const zoneGeo = h('textarea', { id: 'zone-geojson', rows: 8, spellcheck: false });
  const drawBtn = h('button', { id: 'draw-zone', type: 'button', class: 'secondary', text: 'Draw on map' });
  const addCentreBtn = h('button', { id: 'add-vertex', type: 'button', class: 'secondary', disabled: true, text: 'Add point at map centre' });
  const undoBtn = h('button', { id: 'undo-vertex', type: 'button', class: 'secondary', disabled: true, text: 'Undo point' });
  const finishBtn = h('button', { id: 'finish-zone', type: 'button', class: 'secondary', disabled: true, text: 'Finish polygon' });
  const saveZoneBtn = h('button', { id: 'save-zone', type: 'submit', class: 'primary', text: 'Save zone' });
  const drawStatus = h('p', { id: 'draw-status', class: 'hint', role: 'status' });
  const zoneErr = errorRegion('zone-error');
  const zoneStatus = statusRegion('zone-status');
  const centreLat = h('input', { id: 'centre-lat', type: 'number', step: 'any', min: -90, max: 90 });
  const centreLon = h('input', { id: 'centre-lon', type: 'number', step: 'any', min: -180, max: 180 });
  const centreBtn = h('button', { id: 'centre-map', type: 'submit', class: 'secondary', text: 'Go' });
  const centreForm = h('form', { class: 'centre-form', novalidate: true, 'aria-label': 'Move the map' },
    h('div', { class: 'field-row' }, field('Latitude', centreLat), field('Longitude', centreLon), centreBtn));
  const mapEl = h('div', { id: 'map', class: 'map' });
  const zoneForm = h('form', { id: 'zone-form', novalidate: true },
    h('div', { class: 'field-row' }, field('Reference (unique)', zoneRef), field('Name shown to officers', zoneName)),
    field('Shared list (optional)', zoneList, 'Exclusion rules may target a whole list.'),
    field('GeoJSON file', zoneFile, 'Polygon or MultiPolygon; Point with properties.radius_m (circle); LineString with properties.width_m (corridor). Positions are [lon, lat].'),
    field('GeoJSON', zoneGeo),
    h('div', { class: 'button-row', role: 'group', 'aria-label': 'Draw a polygon' }, drawBtn, addCentreBtn, undoBtn, finishBtn),
    drawStatus,
    saveZoneBtn, zoneErr, zoneStatus);
  const zonesTable = h('tbody');

  onSubmit(zoneForm, zoneErr, zoneStatus, { zone_ref: 'zone-ref', name: 'zone-name', geojson: 'zone-geojson', list_ref: 'zone-list-ref', list: 'zone-list-ref' }, async () => {
    if (!zoneRef.value.trim()) throw localProblem('zone_ref', 'enter a reference');
    if (!zoneName.value.trim()) throw localProblem('name', 'enter a name');
    if (draw.active) finishDrawing();
    let geo;
    try {
      geo = JSON.parse(zoneGeo.value);
    } catch (e) {
      throw localProblem('geojson', `not valid JSON (${e.message})`);
    }
    const body = { zone_ref: zoneRef.value.trim(), name: zoneName.value.trim(), geojson: geo };
    if (zoneList.value.trim()) body.list_ref = zoneList.value.trim();
    const f = await post('/zones', body);
    await loadZones();
    announce(`Zone ${f.properties ? f.properties.name : ''} saved.`);
    return `Zone “${f.properties ? f.properties.name : body.name}” saved (id ${f.id}, version ${f.properties ? f.properties.version : 1}).`;
  });

  // ---------- rules ----------
  const supQ = h('input', { id: 'rule-supervisee-q', type: 'search', autocomplete: 'off' });
  const supSel = h('select', { id: 'rule-supervisee', required: true });
  const supMsg = h('p', { class: 'hint', role: 'status' });
  const ruleRole = h('select', { id: 'rule-role', required: true },
    h('option', { value: 'home', text: 'Home: must be inside during the schedule (curfew)' }),
    h('option', { value: 'inclusion', text: 'Inclusion: must stay inside' }),
    h('option', { value: 'exclusion', text: 'Exclusion: must stay out' }));
  const ruleZone = h('select', { id: 'rule-zone' });
  const ruleListRef = h('input', { id: 'rule-list-ref', type: 'text', autocomplete: 'off' });
  const ruleSchedule = h('textarea', { id: 'rule-schedule', rows: 5, spellcheck: false, placeholder: '{"windows": [{"days": ["mon","tue","wed","thu","fri"], "start": "21:00", "end": "07:00"}]}' });
  const ruleGrace = h('input', { id: 'rule-grace', type: 'number', min: 0, max: 86400, step: 1 });
  const ruleConfirm = h('input', { id: 'rule-confirm', type: 'number', min: 1, max: 100, step: 1 });
  const dayBoxes = DAY_NAMES.map((d) => h('input', { id: `win-${d}`, type: 'checkbox', value: d, checked: !['sat', 'sun'].includes(d) }));
  const winStart = h('input', { id: 'win-start', type: 'time', value: '21:00' });
  const winEnd = h('input', { id: 'win-end', type: 'time', value: '07:00' });
  const addWin = h('button', { id: 'add-window', type: 'button', class: 'secondary', text: 'Add window to schedule' });
  const winEndDay = h('input', { id: 'win-end-24', type: 'checkbox' });
  const schedPreview = h('ul', { class: 'plain', id: 'schedule-preview', 'aria-live': 'polite' });
  const ruleErr = errorRegion('rule-error');
  const ruleStatus = statusRegion('rule-status');
  const ruleForm = h('form', { id: 'rule-form', novalidate: true },
    h('div', { class: 'field-row' }, field('Role', ruleRole), field('Zone', ruleZone)),
    field('Or a shared list (exclusion only)', ruleListRef),
    h('fieldset', { class: 'window-editor' },
      h('legend', { text: 'Window editor (adds to the schedule below)' }),
      h('div', { class: 'days', role: 'group', 'aria-label': 'Days the window starts on' },
        DAY_NAMES.map((d, i) => h('span', { class: 'day-box' }, dayBoxes[i], h('label', { for: `win-${d}`, text: DAY_LABELS[d] })))),
      h('div', { class: 'field-row' },
        field('Starts', winStart), field('Ends (earlier than start: next day)', winEnd),
        h('div', { class: 'field checkbox' }, winEndDay, h('label', { for: 'win-end-24', text: 'Ends at midnight (24:00)' }))),
      addWin),
    field('Schedule (JSON; leave empty for “always”)', ruleSchedule, 'Times are wall-clock times in the supervisee’s time zone.'),
    schedPreview,
    h('div', { class: 'field-row' }, field('Grace (seconds, optional)', ruleGrace), field('Fixes to confirm (optional)', ruleConfirm)),
    h('button', { id: 'save-rule', type: 'submit', class: 'primary', text: 'Create rule' }), ruleErr, ruleStatus);
  const rulesList = h('ul', { class: 'plain rules-list', id: 'rules-list' });

  function currentSchedule() {
    const t = ruleSchedule.value.trim();
    if (!t) return null;
    return JSON.parse(t);
  }

  function previewSchedule() {
    clear(schedPreview);
    let s;
    try {
      s = currentSchedule();
    } catch (_) {
      schedPreview.append(h('li', { class: 'hint', text: 'Not valid JSON yet.' }));
      return;
    }
    if (s === null) {
      schedPreview.append(h('li', { class: 'hint', text: 'No schedule: the rule is always in force.' }));
      return;
    }
    const problem = scheduleProblem(s);
    if (problem) {
      schedPreview.append(h('li', { class: 'hint', text: `Schedule: ${problem}` }));
      return;
    }
    for (const w of s.windows) schedPreview.append(h('li', { text: describeWindow(w) }));
  }

  addWin.addEventListener('click', () => {
    const days = dayBoxes.filter((b) => b.checked).map((b) => b.value);
    let s;
    try {
      s = currentSchedule() || { windows: [] };
    } catch (_) {
      showProblem(ruleForm, ruleErr, localProblem('schedule', 'fix the JSON before adding a window'), { schedule: 'rule-schedule' });
      return;
    }
    if (!days.length) {
      showProblem(ruleForm, ruleErr, localProblem('schedule', 'tick at least one day'), { schedule: 'rule-schedule' });
      return;
    }
    if (!winStart.value || (!winEnd.value && !winEndDay.checked)) {
      showProblem(ruleForm, ruleErr, localProblem('schedule', 'enter start and end times'), { schedule: 'rule-schedule' });
      return;
    }
    if (!Array.isArray(s.windows)) s.windows = [];
    s.windows.push({ days, start: winStart.value.slice(0, 5), end: winEndDay.checked ? '24:00' : winEnd.value.slice(0, 5) });
    ruleSchedule.value = JSON.stringify(s, null, 1).replace(/\n\s*/g, ' ');
    previewSchedule();
    announce('Window added to the schedule.');
  });
  winEndDay.addEventListener('change', () => { winEnd.disabled = winEndDay.checked; });
  ruleSchedule.addEventListener('input', previewSchedule);

  onSubmit(ruleForm, ruleErr, ruleStatus, {
    role: 'rule-role', zone_id: 'rule-zone', list_ref: 'rule-list-ref', schedule: 'rule-schedule', grace_s: 'rule-grace', confirm_fixes: 'rule-confirm', supervisee_id: 'rule-supervisee',
  }, async () => {
    if (!supSel.value) throw localProblem('supervisee_id', 'choose a supervisee (above)');
    let schedule;
    try {
      schedule = currentSchedule();
    } catch (e) {
      throw localProblem('schedule', `not valid JSON (${e.message})`);
    }
    const problem = scheduleProblem(schedule);
    if (problem) throw localProblem('schedule', problem);
    if (ruleRole.value === 'home' && schedule === null) throw localProblem('schedule', 'a home (curfew) rule needs a schedule');
    const body = { role: ruleRole.value };
    if (ruleZone.value) body.zone_id = Number(ruleZone.value);
    if (ruleListRef.value.trim()) body.list_ref = ruleListRef.value.trim();
    if (!body.zone_id && !body.list_ref) throw localProblem('zone_id', 'choose a zone (or give a shared list)');
    if (schedule !== null) body.schedule = schedule;
    if (ruleGrace.value !== '') body.grace_s = Number(ruleGrace.value);
    if (ruleConfirm.value !== '') body.confirm_fixes = Number(ruleConfirm.value);
    const r = await post(`/supervisees/${supSel.value}/rules`, body);
    await loadRulesAndExceptions();
    announce('Rule created.');
    return `Rule ${r.rule_id} created.`;
  });

  // ---------- exceptions ----------
  const exc = exceptionsWidget(
    { start: 'exc-start', end: 'exc-end', reason: 'exc-reason', rule: 'exc-rule', save: 'save-exception', list: 'admin-exceptions' },
    { role: 'admin', fieldMapExtra: { supervisee_id: 'rule-supervisee' } },
  );

  // ---------- layout ----------
  const supForm = h('form', { class: 'filters', role: 'search', novalidate: true },
    field('Find supervisee', supQ), h('button', { type: 'submit', class: 'secondary', text: 'Search' }));
  main.append(h('section', { id: 'admin', class: 'page page-admin', 'aria-labelledby': 'page-title' },
    title,
    h('p', { class: 'hint', text: 'Administrators configure devices, zones and rules. They see no positions, tracks or alerts.' }),
    h('div', { class: 'two-col' },
      h('section', { class: 'card', 'aria-labelledby': 'dev-h' }, h('h2', { id: 'dev-h', text: 'Enroll a device' }), enrollForm,
        h('h3', { text: 'Recently enrolled' }), devicesList),
      h('section', { class: 'card', 'aria-labelledby': 'asg-h' }, h('h2', { id: 'asg-h', text: 'Assign a device' }), asgForm)),
    h('section', { class: 'card', 'aria-labelledby': 'zone-h' },
      h('h2', { id: 'zone-h', text: 'Zones' }),
      h('div', { class: 'detail-grid' },
        h('div', {}, zoneForm),
        h('div', { class: 'map-card' }, centreForm, mapEl,
          h('p', { class: 'hint', text: 'Drawing: select “Draw on map”, then click the corners in order (or pan with the arrow keys and use “Add point at map centre”), then “Finish polygon”. The GeoJSON text is the text alternative of the map.' }))),
      h('h3', { text: 'Existing zones' }),
      h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'zones-table' },
        h('thead', {}, h('tr', {}, ['Reference', 'Name', 'Type', 'Version', 'List', ''].map((t) => h('th', { scope: 'col', text: t })))), zonesTable))),
    h('section', { class: 'card', 'aria-labelledby': 'rule-h' },
      h('h2', { id: 'rule-h', text: 'Rules and absences of a supervisee' }),
      supForm, field('Supervisee', supSel), supMsg,
      h('div', { class: 'two-col' },
        h('div', {}, h('h3', { text: 'New rule' }), ruleForm, h('h3', { text: 'Rules' }), rulesList),
        h('div', {}, h('h3', { text: 'Approved absences' }), exc.element)))));
  ctx.focusTitle(title);

  // ---------- data ----------
  async function loadDevices() {
    try {
      const page = await get('/devices', { query: { limit: 20 } });
      if (disposed) return;
      clear(devicesList);
      if (!page.items.length) devicesList.append(h('li', { class: 'empty', text: 'No devices yet.' }));
      for (const d of page.items) {
        devicesList.append(h('li', {},
          h('strong', { text: d.device_id }), ` every ${d.report_interval_s} s, enrolled `, timeEl(d.enrolled_at),
          d.revoked_at ? badge('flag', 'revoked', 'Revoked') : null,
          d.current_assignment ? ` — worn by ${d.current_assignment.case_ref}` : ' — not assigned'));
      }
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) clear(devicesList).append(h('li', { text: `Could not list devices: ${errorText(e)}` }));
    }
  }

  async function loadSupervisees() {
    try {
      const page = await get('/supervisees', { query: { q: supQ.value.trim() || undefined, limit: 200 } });
      if (disposed) return;
      supervisees = page.items;
      const keep = supSel.value;
      for (const sel of [supSel, asgSup]) {
        const prev = sel.value;
        clear(sel);
        sel.append(h('option', { value: '', text: supervisees.length ? 'Choose…' : 'None found' }));
        for (const s of supervisees) {
          sel.append(h('option', { value: String(s.supervisee_id), text: `${s.case_ref}${s.display_name ? ` — ${s.display_name}` : ''} (${s.time_zone})` }));
        }
        if (prev && supervisees.some((s) => String(s.supervisee_id) === prev)) sel.value = prev;
      }
      supMsg.textContent = page.next_cursor ? 'Showing the first 200; search to narrow down.' : '';
      if (supSel.value !== keep) loadRulesAndExceptions();
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) supMsg.textContent = `Could not list supervisees: ${errorText(e)}`;
    }
  }

  async function loadZones() {
    try {
      const page = await get('/zones', { query: { limit: 200 } });
      if (disposed) return;
      zones = page.items;
      const prev = ruleZone.value;
      clear(ruleZone);
      ruleZone.append(h('option', { value: '', text: zones.length ? 'Choose a zone…' : 'No zones yet' }));
      for (const z of zones.filter((x) => !x.retired_at)) {
        ruleZone.append(h('option', { value: String(z.zone_id), text: `${z.name} (${z.zone_ref})` }));
      }
      if (prev) ruleZone.value = prev;
      clear(zonesTable);
      for (const z of zones) {
        const show = h('button', { type: 'button', class: 'link', text: 'Show on map', 'aria-label': `Show zone ${z.name} on the map` });
        show.addEventListener('click', () => showZone(z));
        zonesTable.append(h('tr', {},
          h('td', { dataset: { label: 'Reference' }, text: z.zone_ref }),
          h('td', { dataset: { label: 'Name' }, text: z.name }),
          h('td', { dataset: { label: 'Type' }, text: z.geometry_type || '' }),
          h('td', { dataset: { label: 'Version' }, text: String(z.current_version) }),
          h('td', { dataset: { label: 'List' }, text: z.list_ref || '' }),
          h('td', {}, z.retired_at ? badge('flag', 'retired', 'Retired') : show)));
      }
      if (!zones.length) zonesTable.append(h('tr', {}, h('td', { colSpan: 6, text: 'No zones yet.' })));
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) clear(zonesTable).append(h('tr', {}, h('td', { colSpan: 6, text: `Could not list zones: ${errorText(e)}` })));
    }
  }

  async function showZone(z) {
    if (!mapHandle) return;
    try {
      const f = await get(`/zones/${z.zone_id}`);
      if (disposed || !mapHandle) return;
      const { L, map } = mapHandle;
      if (existingLayer) map.removeLayer(existingLayer);
      existingLayer = zoneLayer(L, map, f, { name: `${z.name} (${z.zone_ref}), version ${z.current_version}`, extraClass: 'zone-existing' }).addTo(map);
      mapHandle.fit([existingLayer]);
      announce(`Showing zone ${z.name} on the map.`);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) drawStatus.textContent = `Could not load the zone: ${errorText(e)}`;
    }
  }

  async function loadRulesAndExceptions() {
    const sid = supSel.value ? Number(supSel.value) : null;
    const sv = supervisees.find((s) => s.supervisee_id === sid);
    clear(rulesList);
    rules = [];
    if (sid === null) {
      rulesList.append(h('li', { class: 'empty', text: 'Choose a supervisee to see their rules.' }));
      await exc.load(null, null, []);
      return;
    }
    try {
      rules = await get(`/supervisees/${sid}/rules`);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) rulesList.append(h('li', { text: `Could not load rules: ${errorText(e)}` }));
    }
    if (disposed) return;
    renderRules(sid);
    await exc.load(sid, sv ? sv.time_zone : null, rules);
  }

  function renderRules(sid) {
    clear(rulesList);
    if (!rules.length) rulesList.append(h('li', { class: 'empty', text: 'No rules.' }));
    for (const r of rules) {
      const where = r.zone ? `${r.zone.name} (${r.zone.zone_ref})` : r.list_ref ? `list ${r.list_ref}` : '';
      const sched = r.schedule && Array.isArray(r.schedule.windows) ? r.schedule.windows.map(describeWindow).join('; ') : 'always';
      const li = h('li', { class: r.retired ? 'retired' : '', dataset: { ruleId: r.rule_id } },
        h('p', {}, h('strong', { text: humanize(r.role) }), where ? `: ${where}` : '', r.retired ? ' ' : '', r.retired ? badge('flag', 'retired', 'Retired') : null),
        h('p', { class: 'hint', text: `Schedule: ${sched}. Grace ${r.grace_s} s, ${r.confirm_fixes} fixes to confirm. Rule ${r.rule_id}.` }));
      if (!r.retired) {
        const btn = h('button', { type: 'button', class: 'secondary', text: 'Retire rule', 'aria-label': `Retire rule ${r.rule_id}` });
        const err = errorRegion(`retire-${r.rule_id}-error`);
        btn.addEventListener('click', async () => {
          btn.disabled = true;
          try {
            await post(`/supervisees/${sid}/rules/${r.rule_id}/retire`, undefined);
            announce(`Rule ${r.rule_id} retired.`);
            await loadRulesAndExceptions();
          } catch (e) {
            if (e instanceof ApiError && e.status === 401) return;
            showProblem(null, err, e);
            btn.disabled = false;
          }
        });
        li.append(btn, err);
      }
      rulesList.append(li);
    }
  }

  supSel.addEventListener('change', loadRulesAndExceptions);
  supForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    loadSupervisees();
  });

  // ---------- map, preview, drawing ----------
  function setPreview(geo) {
    if (!mapHandle) return;
    const { L, map } = mapHandle;
    if (previewLayer) map.removeLayer(previewLayer);
    previewLayer = null;
    if (!geo) return;
    previewLayer = zoneLayer(L, map, geo, { name: zoneName.value || 'New zone', extraClass: 'zone-preview' }).addTo(map);
    mapHandle.fit([previewLayer]);
  }

  let previewTimer = null;
  zoneGeo.addEventListener('input', () => {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(() => {
      try {
        setPreview(JSON.parse(zoneGeo.value));
        drawStatus.textContent = '';
      } catch (_) {
        drawStatus.textContent = zoneGeo.value.trim() ? 'The GeoJSON is not valid JSON yet.' : '';
      }
    }, 400);
  });

  zoneFile.addEventListener('change', async () => {
    const file = zoneFile.files && zoneFile.files[0];
    if (!file) return;
    if (file.size > 2 * 1024 * 1024) {
      showProblem(zoneForm, zoneErr, localProblem('geojson', 'the file is over 2 MiB'), { geojson: 'zone-file' });
      return;
    }
    const text = await file.text();
    let geo;
    try {
      geo = JSON.parse(text);
    } catch (e) {
      showProblem(zoneForm, zoneErr, localProblem('geojson', `the file is not valid JSON (${e.message})`), { geojson: 'zone-file' });
      return;
    }
    // A FeatureCollection of one feature is unwrapped; the API takes a Feature or Geometry.
    if (geo && geo.type === 'FeatureCollection' && Array.isArray(geo.features) && geo.features.length === 1) geo = geo.features[0];
    zoneGeo.value = JSON.stringify(geo, null, 2);
    if (geo && geo.type === 'Feature' && geo.properties) {
      if (!zoneName.value && typeof geo.properties.name === 'string') zoneName.value = geo.properties.name;
      if (!zoneRef.value && typeof geo.properties.zone_ref === 'string') zoneRef.value = geo.properties.zone_ref;
    }
    setPreview(geo);
    drawStatus.textContent = `Loaded ${file.name}.`;
  });

  function redrawDraft() {
    if (!mapHandle) return;
    const { L, map } = mapHandle;
    if (draw.layer) map.removeLayer(draw.layer);
    draw.layer = L.featureGroup();
    if (draw.points.length >= 2) {
      const lineOpts = { className: 'draw-line', color: '#6b4fbb', weight: 2, dashArray: '4 4', interactive: false };
      draw.layer.addLayer(draw.points.length >= 3 ? L.polygon(draw.points, { ...lineOpts, fillOpacity: 0.1 }) : L.polyline(draw.points, lineOpts));
    }
    draw.points.forEach((p, i) => {
      const m = L.circleMarker(p, { className: 'draw-vertex', radius: 5, color: '#6b4fbb', fillColor: '#fff', fillOpacity: 1, weight: 2 });
      m.bindTooltip(tip([`Point ${i + 1}`]));
      draw.layer.addLayer(m);
    });
    draw.layer.addTo(map);
    finishBtn.disabled = draw.points.length < 3;
    undoBtn.disabled = draw.points.length === 0;
    drawStatus.textContent = `Drawing: ${draw.points.length} point${draw.points.length === 1 ? '' : 's'}${draw.points.length < 3 ? ' (at least 3 needed)' : ''}.`;
  }

  function addPoint(latlng) {
    draw.points.push([round6(latlng.lat), round6(latlng.lng)]);
    redrawDraft();
  }

  function startDrawing() {
    if (!mapHandle) return;
    draw.active = true;
    draw.points = [];
    mapEl.classList.add('drawing');
    mapHandle.map.doubleClickZoom.disable();
    drawBtn.textContent = 'Cancel drawing';
    drawBtn.setAttribute('aria-pressed', 'true');
    addCentreBtn.disabled = false;
    setPreview(null);
    redrawDraft();
    drawStatus.textContent = 'Drawing: click the corners of the zone on the map, in order.';
  }

  function stopDrawing() {
    draw.active = false;
    mapEl.classList.remove('drawing');
    if (mapHandle) mapHandle.map.doubleClickZoom.enable();
    drawBtn.textContent = 'Draw on map';
    drawBtn.setAttribute('aria-pressed', 'false');
    addCentreBtn.disabled = true;
    finishBtn.disabled = true;
    undoBtn.disabled = true;
    if (draw.layer && mapHandle) mapHandle.map.removeLayer(draw.layer);
    draw.layer = null;
  }

  function finishDrawing() {
    if (draw.points.length < 3) {
      drawStatus.textContent = 'A polygon needs at least 3 points.';
      return;
    }
    const ring = draw.points.map(([lat, lon]) => [lon, lat]);
    ring.push(ring[0]);
    const geo = { type: 'Feature', properties: {}, geometry: { type: 'Polygon', coordinates: [ring] } };
    zoneGeo.value = JSON.stringify(geo, null, 2);
    const n = draw.points.length;
    stopDrawing();
    setPreview(geo);
    drawStatus.textContent = `Polygon of ${n} points written to the GeoJSON field. Save the zone to create it.`;
    announce(`Polygon of ${n} points finished.`);
    zoneGeo.focus();
  }

  drawBtn.addEventListener('click', () => {
    if (draw.active) {
      stopDrawing();
      drawStatus.textContent = 'Drawing cancelled.';
    } else {
      startDrawing();
    }
  });
  finishBtn.addEventListener('click', finishDrawing);
  undoBtn.addEventListener('click', () => {
    draw.points.pop();
    redrawDraft();
  });
  addCentreBtn.addEventListener('click', () => {
    if (mapHandle && draw.active) addPoint(mapHandle.map.getCenter());
  });
  centreForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const lat = Number(centreLat.value);
    const lon = Number(centreLon.value);
    if (!mapHandle || centreLat.value === '' || centreLon.value === '' || Math.abs(lat) > 90 || Math.abs(lon) > 180) {
      drawStatus.textContent = 'Enter a latitude (−90 to 90) and longitude (−180 to 180).';
      return;
    }
    mapHandle.map.setView([lat, lon], Math.max(mapHandle.map.getZoom(), 15));
  });

  (async () => {
    try {
      mapHandle = await createMap(mapEl, 'Zone map: the zone being drawn or uploaded. Its GeoJSON text is in the GeoJSON field.');
    } catch (e) {
      drawStatus.textContent = `The map is unavailable (${e.message}); paste or upload GeoJSON instead.`;
      drawBtn.disabled = true;
      return;
    }
    if (disposed) {
      mapHandle.dispose();
      mapHandle = null;
      return;
    }
    mapHandle.map.on('click', (ev) => {
      if (draw.active) addPoint(ev.latlng);
    });
  })();

  loadDevices();
  loadZones();
  loadSupervisees().then(() => loadRulesAndExceptions());
  previewSchedule();

  return () => {
    disposed = true;
    clearTimeout(previewTimer);
    if (mapHandle) mapHandle.dispose();
    mapHandle = null;
  };
}

function round6(v) {
  return Math.round(v * 1e6) / 1e6;
}
