// Start forms generated from each task's params JSON Schema (as pydantic writes it).

import { detailText, hasToken } from './api.js';
import { shortId } from './format.js';
import { renderMarkdown } from './markdown.js';

const OMIT = Symbol('omit');
const STRING_INPUT_TYPES = { email: 'email', uri: 'url', password: 'password' };
let formCount = 0;

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

/**
 * Builds the <form data-task="…"> of one task from GET /api/tasks.
 * start(taskName, params) must resolve to {job} once started, or {error}, a JobcastError.
 */
export function buildTaskForm(task, start) {
  const prefix = `task-${++formCount}`;
  const schema = task.params_schema ?? {};
  const fields = schemaFields(schema).map((spec) => buildField(spec, prefix));
  const submitButton = element('button', { type: 'submit', className: 'primary' }, 'Start');
  const message = element('p', { className: 'form-message', role: 'status' });
  const head = element(
    'div', { className: 'task-head' },
    element('h3', { id: `${prefix}-title` }, task.name),
  );
  if (task.mode) head.append(element('span', { className: 'task-mode' }, task.mode));

  // novalidate: constraint messages are shown next to their field, like the server's 422s.
  const form = element('form', { className: 'task-form', noValidate: true }, head);
  form.dataset.task = task.name;
  form.setAttribute('aria-labelledby', `${prefix}-title`);
  if (task.description?.trim()) {
    form.append(element('div', { className: 'task-description' }, renderMarkdown(task.description)));
  }
  form.append(
    element('div', { className: 'fields' }, ...fields.map((field) => field.wrapper)),
    element('div', { className: 'form-actions' }, submitButton, message),
  );

  const view = { form, fields, message, submitButton, task };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    submit(view, start);
  });
  return form;
}

// ---- schema → field specs ----

function schemaFields(schema) {
  const required = new Set(schema.required ?? []);
  return Object.entries(schema.properties ?? {}).map(([name, property]) => {
    const { type, nullable } = unwrap(property, schema);
    return {
      name,
      schema: type,
      kind: fieldKind(type),
      nullable,
      required: required.has(name),
      label: property.title ?? humanize(name),
      description: property.description ?? '',
      hasDefault: 'default' in property,
      default: property.default,
    };
  });
}

function humanize(name) {
  const words = name.replace(/_/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function resolveRef(schema, root) {
  let current = schema;
  for (let depth = 0; current?.$ref && depth < 16; depth += 1) {
    const name = decodeURIComponent(current.$ref.split('/').pop());
    current = root.$defs?.[name] ?? root.definitions?.[name];
  }
  return current ?? {};
}

/** The value's own schema, with $ref, a single allOf and "X or null" unwrapped. */
function unwrap(property, root) {
  let type = resolveRef(property, root);
  let nullable = false;
  const variants = type.anyOf ?? type.oneOf;
  if (variants) {
    const others = variants.filter((variant) => variant.type !== 'null');
    nullable = others.length < variants.length;
    type = others.length === 1 ? resolveRef(others[0], root) : {};
  } else if (type.allOf?.length === 1) {
    type = resolveRef(type.allOf[0], root);
  }
  if (Array.isArray(type.type)) {
    const others = type.type.filter((name) => name !== 'null');
    nullable ||= others.length < type.type.length;
    type = { ...type, type: others.length === 1 ? others[0] : undefined };
  }
  return { type, nullable };
}

function fieldKind(type) {
  if (Array.isArray(type.enum) || 'const' in type) return 'enum';
  if (['boolean', 'integer', 'number', 'string'].includes(type.type)) return type.type;
  return 'json';
}

// ---- field specs → controls ----

function buildField(spec, prefix) {
  const id = `${prefix}-${spec.name.replace(/[^\w-]/g, '_')}`;
  const control = createControl(spec);
  Object.assign(control, { id, name: spec.name });
  const label = element('label', { htmlFor: id }, spec.label);
  if (spec.required) {
    const marker = element('span', { className: 'required' }, ' *');
    marker.setAttribute('aria-hidden', 'true');
    label.append(marker);
  }
  const error = element('p', { className: 'field-error', id: `${id}-error`, hidden: true });
  const hint = spec.description ? element('p', { className: 'field-hint', id: `${id}-hint` }, spec.description) : null;

  const wrapper = spec.kind === 'boolean'
    ? element('div', { className: 'field field-check' }, control, label)
    : element('div', { className: 'field' }, label, control);
  if (hint) wrapper.append(hint);
  wrapper.append(error);

  const field = { spec, control, error, hint, wrapper };
  showFieldError(field, '');
  control.addEventListener('input', () => showFieldError(field, ''));
  return field;
}

function createControl(spec) {
  switch (spec.kind) {
    case 'enum':
      return createSelect(spec);
    case 'boolean':
      return element('input', { type: 'checkbox', checked: spec.default === true });
    case 'integer':
    case 'number':
      return createNumberInput(spec);
    case 'string':
      return createTextInput(spec);
    default:
      return createJsonInput(spec);
  }
}

function createSelect(spec) {
  const values = spec.schema.enum ?? [spec.schema.const];
  const select = element('select', { required: spec.required });
  if (!spec.required && (spec.nullable || !spec.hasDefault)) {
    select.append(element('option', { value: '' }, '—'));
  }
  for (const value of values) {
    const selected = spec.hasDefault && JSON.stringify(value) === JSON.stringify(spec.default);
    select.append(element('option', { value: JSON.stringify(value), selected }, String(value)));
  }
  return select;
}

function createNumberInput(spec) {
  const integer = spec.kind === 'integer';
  const input = element('input', {
    type: 'number',
    required: spec.required,
    step: String(spec.schema.multipleOf ?? (integer ? 1 : 'any')),
    inputMode: integer ? 'numeric' : 'decimal',
  });
  applyBounds(input, spec.schema, integer);
  if (typeof spec.default === 'number') input.value = String(spec.default);
  return input;
}

// HTML has no exclusive bounds: integers move the bound by one, numbers are checked on submit.
function applyBounds(input, schema, integer) {
  const { minimum, maximum, exclusiveMinimum, exclusiveMaximum } = schema;
  if (typeof minimum === 'number') input.min = String(minimum);
  if (typeof maximum === 'number') input.max = String(maximum);
  if (typeof exclusiveMinimum === 'number') {
    input.min = String(integer ? Math.floor(exclusiveMinimum) + 1 : exclusiveMinimum);
    if (!integer) input.dataset.exclusiveMin = String(exclusiveMinimum);
  }
  if (typeof exclusiveMaximum === 'number') {
    input.max = String(integer ? Math.ceil(exclusiveMaximum) - 1 : exclusiveMaximum);
    if (!integer) input.dataset.exclusiveMax = String(exclusiveMaximum);
  }
}

function createTextInput(spec) {
  const input = element('input', {
    type: STRING_INPUT_TYPES[spec.schema.format] ?? 'text',
    required: spec.required,
  });
  if (typeof spec.schema.minLength === 'number') input.minLength = spec.schema.minLength;
  if (typeof spec.schema.maxLength === 'number') input.maxLength = spec.schema.maxLength;
  if (typeof spec.default === 'string') input.value = spec.default;
  return input;
}

function createJsonInput(spec) {
  const textarea = element('textarea', { rows: 2, required: spec.required, placeholder: 'JSON value' });
  textarea.spellcheck = false;
  if (spec.hasDefault && spec.default !== null) textarea.value = JSON.stringify(spec.default);
  return textarea;
}

// ---- validation and values ----

function problemWith(field) {
  const { control, spec } = field;
  control.setCustomValidity(exclusiveBoundProblem(control));
  if (!control.checkValidity()) return control.validationMessage;
  if (spec.kind === 'json' && control.value.trim()) {
    try {
      JSON.parse(control.value);
    } catch {
      return 'Enter a valid JSON value.';
    }
  }
  return '';
}

function exclusiveBoundProblem(control) {
  if (control.type !== 'number' || Number.isNaN(control.valueAsNumber)) return '';
  const value = control.valueAsNumber;
  const { exclusiveMin, exclusiveMax } = control.dataset;
  if (exclusiveMin !== undefined && value <= Number(exclusiveMin)) return `Must be greater than ${exclusiveMin}.`;
  if (exclusiveMax !== undefined && value >= Number(exclusiveMax)) return `Must be less than ${exclusiveMax}.`;
  return '';
}

function readValue(field) {
  const { control, spec } = field;
  switch (spec.kind) {
    case 'boolean':
      return control.checked;
    case 'enum':
      return control.value === '' ? OMIT : JSON.parse(control.value);
    case 'integer':
    case 'number':
      return control.value === '' ? OMIT : control.valueAsNumber;
    case 'string':
      // An empty optional field lets the server apply the parameter's default.
      return control.value === '' && !spec.required ? OMIT : control.value;
    default:
      return control.value.trim() === '' ? OMIT : JSON.parse(control.value);
  }
}

function collectParams(fields) {
  const params = {};
  for (const field of fields) {
    const value = readValue(field);
    if (value !== OMIT) params[field.spec.name] = value;
  }
  return params;
}

// ---- submitting and showing the answer ----

async function submit(view, start) {
  setMessage(view, '', '');
  const problems = view.fields.map((field) => [field, problemWith(field)]);
  for (const [field, problem] of problems) showFieldError(field, problem);
  const invalid = problems.filter(([, problem]) => problem).map(([field]) => field);
  if (invalid.length) {
    setMessage(view, invalid.length === 1 ? 'Check the highlighted field.' : 'Check the highlighted fields.', 'error');
    invalid[0].control.focus();
    return;
  }

  view.submitButton.disabled = true;
  view.form.setAttribute('aria-busy', 'true');
  const { job, error } = await start(view.task.name, collectParams(view.fields));
  view.submitButton.disabled = false;
  view.form.removeAttribute('aria-busy');
  if (job) setMessage(view, `Started ${view.task.name} job ${shortId(job.id)}.`, 'ok');
  else showRefusal(view, error);
}

function showRefusal(view, error) {
  switch (error.status) {
    case 422:
      showValidationErrors(view, error);
      break;
    case 409:
      setMessage(view, duplicateMessage(view.task.name, error.job), 'warning');
      break;
    case 429:
      setMessage(view, queueFullMessage(error.retryAfter), 'warning');
      break;
    case 401:
      setMessage(view, hasToken()
        ? 'Token refused: the server did not accept the access token. Enter the right one at the top of the page, then start the job again.'
        : 'This server needs an access token. Enter it at the top of the page, then start the job again.', 'error');
      break;
    default:
      setMessage(view, detailText(error), 'error');
  }
}

function duplicateMessage(name, job) {
  const existing = job?.id ? ` (job ${shortId(job.id)}, ${job.state})` : '';
  return `Not started: the same ${name} job is already queued or running${existing}. ` +
    'Wait for it to finish or cancel it, then start again.';
}

function queueFullMessage(seconds) {
  const when = seconds !== null
    ? `in ${seconds} second${seconds === 1 ? '' : 's'}`
    : 'in a moment';
  return `Not started: the queue is full right now. Try again ${when}.`;
}

function showValidationErrors(view, error) {
  const detail = error.detail;
  if (!Array.isArray(detail)) {
    setMessage(view, detailText(error), 'error');
    return;
  }
  const byName = new Map(view.fields.map((field) => [field.spec.name, field]));
  const unplaced = [];
  let first = null;
  for (const item of detail) {
    const loc = item.loc ?? [];
    const field = loc[0] === 'body' ? byName.get(String(loc[1])) : undefined;
    if (!field) {
      unplaced.push(item.msg);
      continue;
    }
    const shown = field.error.hidden ? '' : `${field.error.textContent} `;
    showFieldError(field, `${shown}${item.msg}`.trim());
    first ??= field;
  }
  setMessage(view, unplaced.length ? unplaced.join('; ') : 'The server refused these values: check the highlighted fields.', 'error');
  first?.control.focus();
}

function showFieldError(field, message) {
  const { control, error, hint } = field;
  error.textContent = message;
  error.hidden = !message;
  if (message) control.setAttribute('aria-invalid', 'true');
  else control.removeAttribute('aria-invalid');
  const describedBy = [hint?.id, message ? error.id : null].filter(Boolean).join(' ');
  if (describedBy) control.setAttribute('aria-describedby', describedBy);
  else control.removeAttribute('aria-describedby');
}

function setMessage(view, text, kind) {
  view.message.textContent = text;
  view.message.dataset.kind = kind;
}
