// Form building blocks and problem+json display next to the form.

import { h, clear } from './dom.js';
import { ApiError, errorText } from './api.js';

/** A labelled control: <div class="field"><label for=id>…</label>control<p hint></div>. */
export function field(labelText, control, hint) {
  const wrap = h('div', { class: 'field' });
  const label = h('label', { for: control.id, text: labelText });
  wrap.append(label, control);
  if (hint) {
    const hintEl = h('p', { class: 'hint', id: `${control.id}-hint`, text: hint });
    control.setAttribute('aria-describedby', hintEl.id);
    wrap.append(hintEl);
  }
  return wrap;
}

/** Region for a form's errors; role=alert so it is read when it appears. */
export function errorRegion(id) {
  return h('div', { class: 'form-error', id, role: 'alert', hidden: true });
}

/** Status line for a form's successes (polite). */
export function statusRegion(id) {
  return h('p', { class: 'form-status', id, role: 'status', 'aria-live': 'polite' });
}

function rootField(path) {
  return String(path || '').split(/[.[]/)[0];
}

/** Removes earlier error marks from a form. */
export function clearProblem(form, region) {
  if (region) {
    clear(region);
    region.hidden = true;
  }
  if (form) {
    for (const el of form.querySelectorAll('.field-error')) el.remove();
    for (const el of form.querySelectorAll('[aria-invalid="true"]')) {
      el.removeAttribute('aria-invalid');
      const d = (el.getAttribute('aria-describedby') || '').split(' ').filter((x) => x && !x.endsWith('-error'));
      if (d.length) el.setAttribute('aria-describedby', d.join(' '));
      else el.removeAttribute('aria-describedby');
    }
  }
}

/**
 * Shows an error next to the form: the problem's title/detail, each field
 * error named ("geojson: polygon ring is not closed"), and — when the field
 * maps to a control through `fieldMap` ({api_field: element id}) — the message
 * right under that control, which is marked aria-invalid.
 */
export function showProblem(form, region, err, fieldMap = {}) {
  clearProblem(form, region);
  if (!region) return;
  const p = err instanceof ApiError ? err.problem : { title: String((err && err.message) || err) };
  const fieldErrors = err instanceof ApiError ? err.fieldErrors : [];
  const heading = h('p', { class: 'form-error-title' });
  if (err instanceof ApiError && fieldErrors.length === 0) heading.textContent = errorText(err);
  else heading.textContent = p.title || 'The request was refused.';
  region.append(heading);
  if (fieldErrors.length) {
    const ul = h('ul');
    for (const fe of fieldErrors) {
      const li = h('li');
      li.append(h('code', { text: fe.field || '(request)' }), ': ', fe.message || '');
      ul.append(li);
      const id = fieldMap[fe.field] || fieldMap[rootField(fe.field)];
      const control = id && form && form.querySelector(`#${CSS.escape(id)}`);
      if (control) {
        const errId = `${id}-error`;
        let msg = form.querySelector(`#${CSS.escape(errId)}`);
        if (!msg) {
          msg = h('p', { class: 'field-error', id: errId });
          control.insertAdjacentElement('afterend', msg);
        }
        msg.textContent = `${fe.field}: ${fe.message}`;
        control.setAttribute('aria-invalid', 'true');
        const d = (control.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
        if (!d.includes(errId)) d.push(errId);
        control.setAttribute('aria-describedby', d.join(' '));
      }
    }
    region.append(ul);
  } else if (p.detail && p.detail !== heading.textContent && !(err instanceof ApiError)) {
    region.append(h('p', { text: p.detail }));
  }
  region.hidden = false;
}

/** A local validation error shaped like a problem, so it shows the same way. */
export function localProblem(field, message) {
  return new ApiError(422, { title: 'Invalid request fields', status: 422, errors: [{ field, message }] });
}

/**
 * Wires a form: on submit, runs `action()` with the submit button disabled,
 * shows problems in `region`. `action` may return a message for `status`;
 * `after` runs once the buttons are enabled again.
 */
export function onSubmit(form, region, status, fieldMap, action, after) {
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const buttons = form.querySelectorAll('button[type="submit"]');
    for (const b of buttons) b.disabled = true;
    form.setAttribute('aria-busy', 'true');
    clearProblem(form, region);
    if (status) status.textContent = '';
    try {
      const msg = await action(ev);
      if (status && msg) status.textContent = msg;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) {
        showProblem(form, region, err, fieldMap);
        const first = form.querySelector('[aria-invalid="true"]');
        if (first) first.focus();
      }
    } finally {
      for (const b of buttons) b.disabled = false;
      form.removeAttribute('aria-busy');
    }
    // Re-applies state-dependent enabling (e.g. no resolving twice).
    if (after) after();
  });
}
