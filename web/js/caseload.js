// Caseload: the supervisees the signed-in officer may see.

import { h, clear } from './dom.js';
import { get, errorText, ApiError } from './api.js';
import { field } from './forms.js';
import * as store from './store.js';

export function renderCaseload(main, ctx) {
  let disposed = false;
  let cursor = null;
  let query = '';
  clear(main);
  const title = h('h1', { id: 'page-title', tabindex: '-1', text: ctx.session.role === 'supervisor' ? 'Team caseload' : 'My caseload' });
  const q = h('input', { id: 'caseload-q', type: 'search', autocomplete: 'off' });
  const form = h('form', { class: 'filters', role: 'search' }, field('Find by case reference or name', q), h('button', { type: 'submit', text: 'Search' }));
  const msg = h('p', { class: 'page-message', role: 'status' });
  const tbody = h('tbody');
  const table = h('table', { class: 'data', id: 'caseload' },
    h('caption', { class: 'sr-only', text: 'Supervisees in your caseload' }),
    h('thead', {}, h('tr', {}, ['Case reference', 'Name', 'Time zone', 'Officer', 'Open alerts'].map((t) => h('th', { scope: 'col', text: t })))),
    tbody);
  const more = h('button', { type: 'button', class: 'secondary', hidden: true, text: 'Show more' });
  main.append(h('section', { class: 'page', 'aria-labelledby': 'page-title' }, title, form, msg, h('div', { class: 'table-wrap' }, table), more));
  ctx.focusTitle(title);

  function openCount(sid) {
    let n = 0;
    for (const a of store.alerts.values()) if (a.supervisee_id === sid && a.status === 'open') n += 1;
    return n;
  }

  async function load(append) {
    msg.textContent = 'Loading…';
    try {
      const page = await get('/supervisees', { query: { q: query || undefined, limit: 100, cursor: append ? cursor : undefined } });
      if (disposed) return;
      if (!append) clear(tbody);
      for (const s of page.items) {
        const n = openCount(s.supervisee_id);
        tbody.append(h('tr', {},
          h('td', { dataset: { label: 'Case reference' } }, h('a', { href: `#/supervisees/${s.supervisee_id}`, text: s.case_ref })),
          h('td', { dataset: { label: 'Name' }, text: s.display_name || '' }),
          h('td', { dataset: { label: 'Time zone' }, text: s.time_zone }),
          h('td', { dataset: { label: 'Officer' }, text: s.officer_ref || '' }),
          h('td', { dataset: { label: 'Open alerts' }, text: n ? String(n) : '0' })));
      }
      cursor = page.next_cursor || null;
      more.hidden = !cursor;
      msg.textContent = tbody.children.length ? '' : 'No supervisees found.';
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) msg.textContent = `Could not load the caseload: ${errorText(e)}`;
    }
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    query = q.value.trim();
    load(false);
  });
  more.addEventListener('click', () => load(true));
  load(false);
  return () => { disposed = true; };
}
