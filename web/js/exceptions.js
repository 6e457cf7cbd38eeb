// Approved absences (rule exceptions): list, approve, cancel. Used on the
// supervisee page (officers) and the admin page (ids given by `ids`).

import { h, clear, badge, timeEl, fromLocalInput, toLocalInput, announce } from './dom.js';
import { post, getAll, errorText, ApiError } from './api.js';
import { field, errorRegion, statusRegion, onSubmit, localProblem, showProblem } from './forms.js';

function ruleText(rule) {
  if (!rule) return 'a rule';
  const zone = rule.zone ? rule.zone.name : rule.list_ref ? `list ${rule.list_ref}` : '';
  return `${rule.role}${zone ? `: ${zone}` : ''} (rule ${rule.rule_id})`;
}

/**
 * Builds the exceptions widget. ids: {start, end, reason, rule, save, list}.
 * Returns {element, load(superviseeId, tz, rules)} ; `onChange` is called
 * with the current list whenever it changes.
 */
export function exceptionsWidget(ids, { role, onChange, fieldMapExtra = {} } = {}) {
  let sid = null;
  let tz = null;
  let rules = [];
  let items = [];

  const list = h('ul', { id: ids.list, class: 'exceptions-list' });
  const listMsg = h('p', { class: 'page-message', role: 'status' });
  const start = h('input', { id: ids.start, type: 'datetime-local', required: true });
  const end = h('input', { id: ids.end, type: 'datetime-local', required: true });
  const reason = h('input', { id: ids.reason, type: 'text', required: true, maxLength: 500, autocomplete: 'off' });
  const ruleSel = h('select', { id: ids.rule });
  const save = h('button', { id: ids.save, type: 'submit', class: 'primary', text: 'Approve absence' });
  const err = errorRegion(`${ids.save}-error`);
  const status = statusRegion(`${ids.save}-status`);
  const tzNote = h('p', { class: 'hint' });
  const limit = role === 'admin'
    ? 'Administrators may approve absences of up to 366 days.'
    : 'You may approve absences of up to 14 days, starting no earlier than 24 hours ago; longer ones need an administrator.';
  const form = h('form', { class: 'exception-form', novalidate: true },
    h('fieldset', {}, h('legend', { text: 'Approve an absence' }),
      h('p', { class: 'hint', text: limit }), tzNote,
      h('div', { class: 'field-row' }, field('From', start), field('Until', end)),
      field('Suspends', ruleSel),
      field('Reason (e.g. the appointment it covers)', reason),
      save),
    err, status);

  onSubmit(form, err, status, { starts_at: ids.start, ends_at: ids.end, reason: ids.reason, rule_id: ids.rule, ...fieldMapExtra }, async () => {
    if (sid === null) throw localProblem('supervisee_id', 'choose a supervisee first');
    const s = fromLocalInput(start.value);
    const e = fromLocalInput(end.value);
    if (!s) throw localProblem('starts_at', 'enter a start date and time');
    if (!e) throw localProblem('ends_at', 'enter an end date and time');
    if (e <= s) throw localProblem('ends_at', 'must be after the start');
    if (!reason.value.trim()) throw localProblem('reason', 'say why the absence is approved');
    const body = { starts_at: s.toISOString(), ends_at: e.toISOString(), reason: reason.value.trim() };
    if (ruleSel.value) body.rule_id = Number(ruleSel.value);
    const x = await post(`/supervisees/${sid}/exceptions`, body);
    reason.value = '';
    await refresh();
    announce('Absence approved.');
    return `Absence approved (${x.status}).`;
  });

  function fillRules() {
    clear(ruleSel);
    ruleSel.append(h('option', { value: '', text: 'All of their rules' }));
    for (const r of rules.filter((x) => !x.retired)) ruleSel.append(h('option', { value: String(r.rule_id), text: `Only ${ruleText(r)}` }));
  }

  function render() {
    clear(list);
    if (!items.length) list.append(h('li', { class: 'empty', text: 'No approved absences.' }));
    const byId = new Map(rules.map((r) => [r.rule_id, r]));
    for (const x of items) {
      const li = h('li', { class: `exception status-${x.status}`, dataset: { exceptionId: x.exception_id, status: x.status } },
        h('p', {}, badge('exception', x.status), ' ', timeEl(x.starts_at, tz), ' – ', timeEl(x.ends_at, tz)),
        h('p', { class: 'exc-reason', text: x.reason }),
        h('p', { class: 'hint', text: `${x.rule_id ? `Suspends ${ruleText(byId.get(x.rule_id) || { rule_id: x.rule_id })}` : 'Suspends all rules'}; approved by ${x.created_by}${x.cancelled_by ? `; cancelled by ${x.cancelled_by}` : ''}` }));
      if (x.status === 'scheduled' || x.status === 'active') {
        const btn = h('button', { type: 'button', class: 'secondary', text: 'Cancel absence', 'aria-label': `Cancel absence: ${x.reason}` });
        const cerr = errorRegion(`exc-cancel-${x.exception_id}-error`);
        btn.addEventListener('click', async () => {
          btn.disabled = true;
          try {
            await post(`/supervisees/${sid}/exceptions/${x.exception_id}/cancel`, undefined);
            announce('Absence cancelled.');
            await refresh();
          } catch (e) {
            if (e instanceof ApiError && e.status === 401) return;
            showProblem(null, cerr, e);
            btn.disabled = false;
          }
        });
        li.append(btn, cerr);
      }
      list.append(li);
    }
  }

  async function refresh() {
    if (sid === null) return;
    try {
      const page = await getAll(`/supervisees/${sid}/exceptions`, {}, 200);
      items = page.items.sort((a, b) => new Date(b.starts_at) - new Date(a.starts_at));
      listMsg.textContent = '';
      render();
      if (onChange) onChange(items);
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) listMsg.textContent = `Could not load absences: ${errorText(e)}`;
    }
  }

  const element = h('div', { class: 'exceptions-widget' }, listMsg, list, form);

  return {
    element,
    items: () => items,
    async load(superviseeId, timeZone, ruleList) {
      sid = superviseeId;
      tz = timeZone;
      rules = ruleList || [];
      tzNote.textContent = tz ? `Enter times in your own time zone; their time zone is ${tz}.` : '';
      fillRules();
      if (!start.value) {
        const now = new Date();
        now.setSeconds(0, 0);
        start.value = toLocalInput(now);
        end.value = toLocalInput(new Date(now.getTime() + 3 * 3600 * 1000));
      }
      if (sid === null) {
        items = [];
        clear(list);
        return;
      }
      await refresh();
    },
  };
}
