// The jobcast dashboard: live job table, start forms and logs over one SSE stream.

import { auth, detailText, hasToken, request, setToken, streamUrl } from './api.js';
import { TERMINAL_STATES, formatDuration, parseTime, shortId } from './format.js';
import { buildTaskForm } from './forms.js';
import { LogBook, LogPanel } from './logs.js';
import { LiveStream } from './stream.js';
import { JobTable, matchesFilter } from './table.js';

const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted'];
const CONNECTION_TEXT = { live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline' };
const ANNOUNCE_LIMIT = 3;
// Finished jobs the page keeps; past it the oldest go, so a tab left open for days stays
// small. Active jobs always stay. (A test lowers it through globalThis.jobcastKeepFinished.)
const KEEP_FINISHED = globalThis.jobcastKeepFinished ?? 1000;

const $ = (selector) => document.querySelector(selector);

const jobs = new Map();
const dirty = new Set();
const knownTasks = new Set();
const filter = { state: '', task: '' };
const logBook = new LogBook();
const table = new JobTable($('#jobs-body'), $('#job-row'));
const logPanel = new LogPanel($('#log-panel'), logBook);
const stream = new LiveStream({ onEvent: handleEvent, onStatus: showConnection });

let lastSeq = 0;
let rebuildPending = false;
let frame = 0;
let clockSkew = 0; // server clock minus ours, so running durations do not depend on our clock
let announcements = [];
let everLive = false;
let tasksLoaded = false;

// ---- the stream ----

function connect() {
  stream.open(streamUrl('/api/events', lastSeq));
}

async function connectWithToken() {
  // A request that sends the token first: with reads protected, its answer sets the cookie
  // that the EventSource carries (and a 401 raises the token prompt).
  if (hasToken()) await request('HEAD', '/api/events');
  connect();
}

function handleEvent(type, data, lastEventId) {
  if (type === 'reset') {
    // The snapshot that follows is the new truth, whatever its seq.
    lastSeq = 0;
    return;
  }
  const seq = Number.parseInt(data.seq ?? lastEventId, 10);
  if (Number.isFinite(seq)) {
    if (seq <= lastSeq) return;
    lastSeq = seq;
  }
  if (type === 'snapshot') applySnapshot(data);
  else if (type === 'log') logBook.add(data.job_id, data.line);
  else if (type === 'deleted') forgetJob(data.job_id);
  else if (data.job) applyJob(data.job);
  scheduleFrame();
}

function applySnapshot(data) {
  if (typeof data.ts === 'number') clockSkew = data.ts * 1000 - Date.now();
  jobs.clear();
  for (const job of data.jobs ?? []) {
    jobs.set(job.id, job);
    noteTask(job.task);
  }
  logBook.retainOnly(jobs);
  dirty.clear();
  rebuildPending = true;
  if (logPanel.jobId !== null && !jobs.has(logPanel.jobId)) closeLogs();
}

function forgetJob(id) {
  jobs.delete(id);
  dirty.delete(id);
  table.remove(id);
  logBook.retainOnly(jobs);
  if (logPanel.jobId === id) closeLogs();
}

function applyJob(job) {
  const previous = jobs.get(job.id);
  if (job.schedule && !previous) refreshSchedulesSoon(); // its schedule moved on
  jobs.set(job.id, job);
  dirty.add(job.id);
  noteTask(job.task);
  if (TERMINAL_STATES.has(job.state) && previous?.state !== job.state) {
    announcements.push(`${job.task} job ${shortId(job.id)} ${job.state}.`);
    forgetOldFinished();
  }
}

function forgetOldFinished() {
  const finished = [...jobs.values()].filter((job) => TERMINAL_STATES.has(job.state));
  // Prune in steps of a tenth: a rebuild per finished job would cost a frame each.
  if (finished.length <= KEEP_FINISHED + Math.ceil(KEEP_FINISHED / 10)) return;
  finished.sort((a, b) => Date.parse(a.created_at) - Date.parse(b.created_at));
  for (const job of finished.slice(0, finished.length - KEEP_FINISHED)) {
    jobs.delete(job.id);
    dirty.delete(job.id);
  }
  logBook.retainOnly(jobs);
  if (logPanel.jobId !== null && !jobs.has(logPanel.jobId)) closeLogs();
  rebuildPending = true;
}

function serverNow() {
  return Date.now() + clockSkew;
}

// ---- drawing: events only mark jobs dirty, one animation frame draws them all ----

function scheduleFrame() {
  frame ||= requestAnimationFrame(drawFrame);
}

function drawFrame() {
  frame = 0;
  const now = serverNow();
  if (rebuildPending) table.rebuild(jobs.values(), now);
  else for (const id of dirty) table.render(jobs.get(id), now);
  rebuildPending = false;
  dirty.clear();
  logPanel.render();
  announce();
  updateSummary();
}

function announce() {
  if (!announcements.length) return;
  $('#announcer').textContent = announcements.length > ANNOUNCE_LIMIT
    ? `${announcements.length} jobs finished.`
    : announcements.join(' ');
  announcements = [];
}

function updateSummary() {
  let shown = 0;
  for (const job of jobs.values()) if (matchesFilter(job, filter)) shown += 1;
  const total = `${jobs.size} job${jobs.size === 1 ? '' : 's'}`;
  $('#job-count').textContent = shown === jobs.size ? total : `${shown} of ${total}`;
  const empty = $('#jobs-empty');
  empty.hidden = shown > 0;
  empty.textContent = jobs.size ? 'No jobs match these filters.' : 'No jobs yet. Start one with a form.';
}

function showConnection(status) {
  $('#connection').dataset.status = status;
  $('#connection-text').textContent = status === 'reconnecting' && !everLive ? 'Connecting…' : CONNECTION_TEXT[status];
  $('#connection-retry').hidden = status !== 'offline';
  everLive ||= status === 'live';
  // EventSource hides why it gave up; a HEAD answering 401 raises the token prompt.
  if (status === 'offline') request('HEAD', '/api/events');
}

// ---- filters ----

function setupFilters() {
  $('#filter-state').append(...STATES.map((state) => new Option(state, state)));
  $('#filter-state').addEventListener('change', applyFilter);
  $('#filter-task').addEventListener('change', applyFilter);
}

function applyFilter() {
  filter.state = $('#filter-state').value;
  filter.task = $('#filter-task').value;
  table.setFilter({ ...filter });
  updateSummary();
}

function noteTask(name) {
  if (knownTasks.has(name)) return;
  knownTasks.add(name);
  const select = $('#filter-task');
  const next = [...select.options].find((option) => option.value && option.value > name);
  select.insertBefore(new Option(name, name), next ?? null);
}

// ---- tasks and jobs ----

async function loadTasks() {
  const box = $('#task-forms');
  const response = await request('GET', '/api/tasks');
  if (!response.ok) {
    const text = response.status === 401
      ? 'Enter the access token above to load the tasks.'
      : `Could not load the tasks. ${detailText(response)}`;
    box.replaceChildren(Object.assign(document.createElement('p'), { className: 'muted', textContent: text }));
    return;
  }
  box.replaceChildren(...response.data.map((task) => buildTaskForm(task, startJob)));
  for (const task of response.data) noteTask(task.name);
  tasksLoaded = true;
}

async function startJob(name, params) {
  const response = await request('POST', `/api/tasks/${encodeURIComponent(name)}/jobs`, params);
  const job = response.status === 202 ? response.data : null;
  // The stream may already have brought this job further along: only fill a gap.
  if (job?.id && !jobs.has(job.id)) {
    applyJob(job);
    scheduleFrame();
  }
  return response;
}

async function cancelJob(id) {
  const job = jobs.get(id);
  table.setCancelling(id, true);
  const response = await request('POST', `/api/jobs/${encodeURIComponent(id)}/cancel`);
  if (response.status === 202) return; // the stream brings the cancelled state
  table.setCancelling(id, false);
  notify(cancelProblem(job, response));
}

async function rerunJob(id) {
  const response = await request('POST', `/api/jobs/${encodeURIComponent(id)}/rerun`);
  if (response.status === 202) {
    if (!jobs.has(response.data.id)) {
      applyJob(response.data);
      scheduleFrame();
    }
    return;
  }
  notify(`The job could not be started again. ${detailText(response)}`);
}

async function deleteJob(id) {
  const response = await request('DELETE', `/api/jobs/${encodeURIComponent(id)}`);
  if (response.status === 204 || response.status === 404) {
    forgetJob(id); // the stream says so too; a job already gone is as good as deleted
    scheduleFrame();
    return;
  }
  notify(`The job could not be deleted. ${detailText(response)}`);
}

// ---- schedules ----

let schedules = [];
let schedulesDue = 0; // a refresh asked for and not made yet

function refreshSchedulesSoon() {
  // At most one request a second, however often the schedules start jobs.
  schedulesDue ||= setTimeout(() => {
    schedulesDue = 0;
    refreshSchedules();
  }, 1000);
}

async function refreshSchedules() {
  const response = await request('GET', '/api/schedules');
  if (!response.ok || !Array.isArray(response.data)) return;
  schedules = response.data;
  drawSchedules();
}

function drawSchedules() {
  const list = $('#schedule-list');
  $('#schedules').hidden = schedules.length === 0;
  const items = schedules.map((schedule) => {
    const item = $('#schedule-item').content.firstElementChild.cloneNode(true);
    const parts = {};
    for (const element of item.querySelectorAll('[data-part]')) parts[element.dataset.part] = element;
    item.dataset.name = schedule.name;
    item.dataset.paused = String(schedule.paused);
    parts.name.textContent = schedule.name === schedule.task ? schedule.name : `${schedule.name} (${schedule.task})`;
    parts.expression.textContent = schedule.expression;
    parts.next.textContent = nextRunText(schedule, serverNow());
    parts.toggle.textContent = schedule.paused ? 'Resume' : 'Pause';
    parts.toggle.setAttribute('aria-label', `${schedule.paused ? 'Resume' : 'Pause'} schedule ${schedule.name}`);
    return item;
  });
  list.replaceChildren(...items);
}

function nextRunText(schedule, now) {
  if (schedule.paused) return 'paused';
  const next = parseTime(schedule.next_run_at);
  if (next === null) return '';
  return next <= now ? 'starting now' : `next in ${formatDuration((next - now) / 1000)}`;
}

function tickSchedules() {
  const now = serverNow();
  for (const item of $('#schedule-list').children) {
    const schedule = schedules.find((entry) => entry.name === item.dataset.name);
    if (schedule) item.querySelector('[data-part="next"]').textContent = nextRunText(schedule, now);
  }
}

async function toggleSchedule(event) {
  const item = event.target.closest('li[data-name]');
  if (!item || !event.target.closest('button')) return;
  const action = item.dataset.paused === 'true' ? 'resume' : 'pause';
  const response = await request('POST', `/api/schedules/${encodeURIComponent(item.dataset.name)}/${action}`);
  if (!response.ok) notify(`The schedule could not be changed. ${detailText(response)}`);
  await refreshSchedules();
}

function cancelProblem(job, response) {
  const name = job ? `The ${job.task} job ${shortId(job.id)}` : 'This job';
  switch (response.status) {
    case 409:
      return `${name} had already finished, so there was nothing to cancel.`;
    case 404:
      return `${name} is no longer known to the server.`;
    case 401:
      return 'Cancelling needs an access token: enter it at the top of the page.';
    default:
      return `${name} could not be cancelled. ${detailText(response)}`;
  }
}

function notify(text) {
  $('#notice-text').textContent = text;
  $('#notice').hidden = false;
}

// ---- logs ----

function openLogs(id, moveFocus) {
  const job = jobs.get(id);
  if (!job) return;
  table.select(id);
  logPanel.open(id, `${job.task} · ${shortId(id)}`);
  if (moveFocus) $('#log-close').focus();
}

function closeLogs() {
  const id = logPanel.jobId;
  const returnFocus = $('#log-panel').contains(document.activeElement);
  logPanel.close();
  table.select(null);
  if (returnFocus) table.logsButton(id)?.focus();
}

function onTableClick(event) {
  const row = event.target.closest('tr[data-job-id]');
  if (!row) return;
  const id = row.dataset.jobId;
  if (event.target.closest('button.cancel')) cancelJob(id);
  else if (event.target.closest('button.rerun')) rerunJob(id);
  else if (event.target.closest('button.delete')) deleteJob(id);
  else if (event.target.closest('button.logs')) openLogs(id, true);
  else if (!event.target.closest('button') && !window.getSelection()?.toString()) openLogs(id, false);
}

// ---- token ----

function askForToken() {
  $('#token-form').hidden = false;
}

async function saveToken(event) {
  event.preventDefault();
  setToken($('#token-input').value.trim());
  $('#token-form').hidden = true;
  await connectWithToken();
  if (!tasksLoaded) loadTasks();
}

// ---- start ----

setupFilters();
auth.addEventListener('required', askForToken);
$('#token-form').addEventListener('submit', saveToken);
$('#connection-retry').addEventListener('click', connectWithToken);
$('#notice-close').addEventListener('click', () => { $('#notice').hidden = true; });
$('#jobs-body').addEventListener('click', onTableClick);
$('#log-close').addEventListener('click', closeLogs);
$('#log-panel').addEventListener('keydown', (event) => {
  if (event.key === 'Escape') closeLogs();
});
$('#schedule-list').addEventListener('click', toggleSchedule);
setInterval(() => {
  table.tick(serverNow());
  tickSchedules();
}, 1000);
setInterval(refreshSchedules, 30_000); // what another page or process changed
updateSummary();
connectWithToken();
loadTasks();
refreshSchedules();
