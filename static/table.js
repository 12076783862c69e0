// The jobs table: one <tr> per job id, kept in place and updated field by field.

import {
  TERMINAL_STATES,
  TOOLTIP_LIMIT,
  formatClock,
  formatCount,
  formatDuration,
  formatRate,
  jobDuration,
  jobLink,
  parseTime,
  shortId,
  summarizeParams,
  truncate,
} from './format.js';
import { showOutcome } from './outcome.js';

const CANCELLABLE = new Set(['queued', 'running']);
const PARAMS_PREVIEW = 60;

/** What the state badge leaves out: the attempt, a countdown, the priority, a cancel asked. */
export function stateNote(job, now) {
  const notes = [];
  const attempts = job.max_attempts > 1 ? `attempt ${job.attempt} of ${job.max_attempts}` : '';
  const runAt = parseTime(job.run_at);
  if (job.state === 'queued' && runAt !== null && runAt > now) {
    const wait = `in ${formatDuration((runAt - now) / 1000)}`;
    notes.push(attempts ? `${attempts} ${wait}` : `starts ${wait}`);
  } else if (attempts && (job.state === 'running' || job.attempt > 1)) {
    notes.push(attempts);
  }
  if (job.cancelling) notes.push('cancelling…');
  if (job.priority) notes.push(`priority ${job.priority}`);
  return notes.join(' · ');
}

export function matchesFilter(job, filter) {
  return (!filter.state || job.state === filter.state) && (!filter.task || job.task === filter.task);
}

function createdMs(job) {
  return parseTime(job.created_at) ?? 0;
}

// Writing only what changed keeps style and layout work proportional to real changes.
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

export class JobTable {
  #body;
  #template;
  #views = new Map();
  #order = []; // {id, created} newest first, mirrors the row order in the DOM
  #filter = { state: '', task: '' };
  #selected = null;

  constructor(body, template) {
    this.#body = body;
    this.#template = template;
  }

  /** Replaces every row by rows for `jobs`, newest first. */
  rebuild(jobs, now) {
    this.#views.clear();
    const sorted = [...jobs].sort((a, b) => createdMs(b) - createdMs(a));
    this.#order = sorted.map((job) => ({ id: job.id, created: createdMs(job) }));
    const fragment = document.createDocumentFragment();
    for (const job of sorted) fragment.append(this.#createRow(job, now));
    this.#body.replaceChildren(fragment);
  }

  /** Shows the latest snapshot of one job, adding its row in date order if it is new. */
  render(job, now) {
    const view = this.#views.get(job.id);
    if (view) this.#update(view, job, now);
    else this.#insert(this.#createRow(job, now), job);
  }

  /** Refreshes the running clocks and the countdowns only. */
  tick(now) {
    for (const view of this.#views.values()) {
      if (view.job.state === 'running') {
        setText(view.parts.duration, formatDuration(jobDuration(view.job, now)));
      } else if (view.job.state === 'queued' && view.job.run_at) {
        setText(view.parts.note, stateNote(view.job, now));
      }
    }
  }

  /** Drops the row of a job that was deleted. */
  remove(id) {
    const view = this.#views.get(id);
    if (!view) return;
    view.row.remove();
    this.#views.delete(id);
    this.#order = this.#order.filter((entry) => entry.id !== id);
    if (this.#selected === id) this.#selected = null;
  }

  setFilter(filter) {
    this.#filter = filter;
    for (const view of this.#views.values()) view.row.hidden = !matchesFilter(view.job, filter);
  }

  setCancelling(id, cancelling) {
    const view = this.#views.get(id);
    if (!view) return;
    view.cancelling = cancelling;
    this.#updateCancel(view);
  }

  select(id) {
    this.#views.get(this.#selected)?.row.classList.remove('selected');
    this.#selected = id;
    this.#views.get(id)?.row.classList.add('selected');
  }

  logsButton(id) {
    return this.#views.get(id)?.parts.logs ?? null;
  }

  #createRow(job, now) {
    const row = this.#template.content.firstElementChild.cloneNode(true);
    const parts = {};
    for (const element of row.querySelectorAll('[data-part]')) parts[element.dataset.part] = element;
    const view = { row, parts, job, cancelling: false };
    this.#views.set(job.id, view);

    row.dataset.jobId = job.id;
    row.classList.toggle('selected', job.id === this.#selected);
    const label = `${job.task} job ${shortId(job.id)}`;
    parts.task.textContent = job.task;
    parts.id.textContent = shortId(job.id);
    parts.id.href = jobLink(job.id);
    parts.id.title = `Link to ${label} (${job.id})`;
    const params = summarizeParams(job.params);
    parts.params.textContent = truncate(params, PARAMS_PREVIEW);
    parts.params.title = truncate(params, TOOLTIP_LIMIT);
    parts.bar.setAttribute('aria-label', `Progress of ${label}`);
    parts.logs.setAttribute('aria-label', `Logs of ${label}`);
    parts.cancel.setAttribute('aria-label', `Cancel ${label}`);
    parts.rerun.setAttribute('aria-label', `Run ${label} again`);
    parts.delete.setAttribute('aria-label', `Delete ${label}`);
    this.#update(view, job, now);
    return row;
  }

  #insert(row, job) {
    const created = createdMs(job);
    // Binary search for the first strictly older job: new jobs usually land on top.
    let low = 0;
    let high = this.#order.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (this.#order[middle].created > created) low = middle + 1;
      else high = middle;
    }
    const next = this.#order[low];
    this.#order.splice(low, 0, { id: job.id, created });
    this.#body.insertBefore(row, next ? this.#views.get(next.id).row : null);
  }

  #update(view, job, now) {
    view.job = job;
    const { row, parts } = view;
    if (row.dataset.state !== job.state) row.dataset.state = job.state;
    setText(parts.badge, job.state);
    setText(parts.note, stateNote(job, now));
    this.#updateProgress(parts, job);
    this.#updateStarted(parts.started, job.started_at ?? '');
    setText(parts.duration, formatDuration(jobDuration(job, now)));
    showOutcome(parts.outcome, job);
    this.#updateCancel(view);
    row.hidden = !matchesFilter(job, this.#filter);
  }

  #updateProgress(parts, job) {
    const progress = job.progress ?? {};
    const percent = typeof progress.percent === 'number' ? Math.min(100, Math.max(0, progress.percent)) : null;
    const bar = parts.bar;
    bar.dataset.percent = percent === null ? '' : String(percent);
    if (percent === null) bar.removeAttribute('aria-valuenow');
    else bar.setAttribute('aria-valuenow', String(Math.floor(percent)));
    bar.classList.toggle('indeterminate', percent === null && job.state === 'running');
    parts.fill.style.transform = `scaleX(${(percent ?? 0) / 100})`;

    setText(parts.percent, percent === null ? '' : `${Math.floor(percent)}%`);
    const eta = job.state === 'running' && typeof progress.eta_s === 'number'
      ? `ETA ${formatDuration(progress.eta_s)}`
      : '';
    // Each piece keeps together; the line breaks between them rather than cut the ETA.
    const details = [formatCount(progress), formatRate(progress.rate), eta]
      .filter(Boolean)
      .map((piece) => piece.replaceAll(' ', '\u00a0'));
    setText(parts.detail, details.join(' · '));
    setText(parts.message, progress.message ?? '');
    parts.message.title = progress.message ?? '';
  }

  #updateStarted(time, startedAt) {
    if (time.dateTime === startedAt) return;
    time.dateTime = startedAt;
    time.textContent = formatClock(startedAt);
    const ms = parseTime(startedAt);
    time.title = ms === null ? '' : new Date(ms).toLocaleString();
  }

  #updateCancel(view) {
    const { cancel, rerun } = view.parts;
    const cancelling = view.cancelling || view.job.cancelling === true;
    cancel.hidden = !CANCELLABLE.has(view.job.state);
    cancel.disabled = cancelling;
    setText(cancel, cancelling ? 'Cancelling…' : 'Cancel');
    const finished = TERMINAL_STATES.has(view.job.state);
    rerun.hidden = !finished;
    view.parts.delete.hidden = !finished;
  }
}
