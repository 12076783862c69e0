// The jobcast dashboard: live job table, start forms, and the log panel of one job, over
// the client module's streams.

import { auth, connection, detailText, hasToken, noteRefusal, request, setToken } from './api.js';
import { TERMINAL_STATES, formatDuration, jobInLink, jobLink, parseTime, shortId } from './format.js';
import { buildTaskForm } from './forms.js';
import { JobcastError, startJob, watchJobs } from './jobcast-client.js';
import { LogPanel } from './logs.js';
import { JobTable, matchesFilter } from './table.js';

const STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted'];
const CONNECTION_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
  refused: 'Token refused',
  locked: 'Token needed',
};
const ANNOUNCE_LIMIT = 3;
// Finished jobs the page keeps; past it the oldest go, so a tab left open for days stays
// small. Active jobs always stay. (A test lowers it through globalThis.jobcastKeepFinished.)
const KEEP_FINISHED = globalThis.jobcastKeepFinished ?? 1000;

const $ = (selector) => document.querySelector(selector);

const jobs = new Map();
const dirty = new Set();
const knownTasks = new Set();
const filter = { state: '', task: '' };
const table = new JobTable($('#jobs-body'), $('#job-row'));
const logPanel = new LogPanel($('#log-panel'), { onChange: scheduleFrame, connection });

let live = null; // the stream of every job
let rebuildPending = false;
let frame = 0;
let clockSkew = 0; // server clock minus ours, so running durations do not depend on our clock
let announcements = [];
let tasksLoaded = false;

// ---- the stream ----

function connect() {
  const lastEventId = live?.lastEventId;
  live?.close();
  live = watchJobs(
    { event: handleEvent, status: showConnection, error: streamStopped },
    { ...connection(), lastEventId },
  );
}

function handleEvent(type, data) {
  // A reset is followed by the snapshot that replaces everything; log lines are the
  // log panel's, which follows its job's own stream.
  if (type === 'reset' || type === 'log') return;
  if (type === 'snapshot') applySnapshot(data);
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
  dirty.clear();
  rebuildPending = true;
}

function forgetJob(id) {
  jobs.delete(id);
  dirty.delete(id);
  table.remove(id);
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

function showConnection(status, error) {
  // A stream closed without an error is one this page closed, to open another.
  if (status === 'closed' && !error) return;
  let shown = status;
  if (status === 'closed') shown = error.status === 401 ? (hasToken() ? 'refused' : 'locked') : 'offline';
  $('#connection').dataset.status = status === 'connecting' ? 'reconnecting' : shown;
  $('#connection-text').textContent = CONNECTION_TEXT[shown];
  $('#connection').title = error ? detailText(error) : '';
  $('#connection-retry').hidden = shown !== 'offline';
}

function streamStopped(error) {
  noteRefusal(error);
  if (error.status === 401) return; // the token prompt says it
  notify(live?.status === 'closed' ? `The live view stopped. ${detailText(error)}` : detailText(error));
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
    const text = response.status !== 401
      ? `Could not load the tasks. ${detailText(response.error)}`
      : hasToken()
        ? 'The server refused the access token: enter the right one above to load the tasks.'
        : 'Enter the access token above to load the tasks.';
    box.replaceChildren(Object.assign(document.createElement('p'), { className: 'muted', textContent: text }));
    return;
  }
  box.replaceChildren(...response.data.map((task) => buildTaskForm(task, startFromForm)));
  for (const task of response.data) noteTask(task.name);
  tasksLoaded = true;
}

async function startFromForm(name, params) {
  let job;
  try {
    job = await startJob(name, params, connection());
  } catch (error) {
    if (!(error instanceof JobcastError)) throw error;
    noteRefusal(error);
    return { error };
  }
  // The stream may already have brought this job further along: only fill a gap.
  if (!jobs.has(job.id)) {
    applyJob(job);
    scheduleFrame();
  }
  return { job };
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
  notify(`The job could not be started again. ${detailText(response.error)}`);
}

async function deleteJob(id) {
  const response = await request('DELETE', `/api/jobs/${encodeURIComponent(id)}`);
  if (response.status === 204 || response.status === 404) {
    forgetJob(id); // the stream says so too; a job already gone is as good as deleted
    scheduleFrame();
    return;
  }
  notify(`The job could not be deleted. ${detailText(response.error)}`);
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
  if (!response.ok) notify(`The schedule could not be changed. ${detailText(response.error)}`);
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
      return hasToken()
        ? 'Token refused: cancelling needs the right access token. Enter it at the top of the page.'
        : 'Cancelling needs an access token: enter it at the top of the page.';
    default:
      return `${name} could not be cancelled. ${detailText(response.error)}`;
  }
}

function notify(text) {
  $('#notice-text').textContent = text;
  $('#notice').hidden = false;
}

// ---- logs: the panel of one job, named by the page's link (#job=ID) ----

function openLogs(id, moveFocus) {
  table.select(id);
  logPanel.open(id, jobs.get(id));
  if (window.location.hash !== jobLink(id)) history.replaceState(null, '', jobLink(id));
  if (moveFocus) $('#log-close').focus();
}

function closeLogs() {
  const id = logPanel.jobId;
  const returnFocus = $('#log-panel').contains(document.activeElement);
  logPanel.close();
  table.select(null);
  if (jobInLink(window.location.hash) !== null) {
    history.replaceState(null, '', window.location.pathname + window.location.search);
  }
  if (returnFocus) table.logsButton(id)?.focus();
}

function followLink() {
  const id = jobInLink(window.location.hash);
  if (id === null && logPanel.jobId !== null) closeLogs();
  else if (id !== null && id !== logPanel.jobId) openLogs(id, false);
}

function onTableClick(event) {
  const row = event.target.closest('tr[data-job-id]');
  // A link opens its job by itself; an outcome opens and closes in place.
  if (!row || event.target.closest('a, details')) return;
  const id = row.dataset.jobId;
  if (event.target.closest('button.cancel')) cancelJob(id);
  else if (event.target.closest('button.rerun')) rerunJob(id);
  else if (event.target.closest('button.delete')) deleteJob(id);
  else if (event.target.closest('button.logs')) openLogs(id, true);
  else if (!event.target.closest('button') && !window.getSelection()?.toString()) openLogs(id, false);
}

// ---- token ----

function askForToken(event) {
  $('#token-label').textContent = event.detail?.refused
    ? 'The server refused this access token. Enter the right one.'
    : 'This server needs an access token.';
  $('#token-form').hidden = false;
}

function saveToken(event) {
  event.preventDefault();
  setToken($('#token-input').value.trim());
  $('#token-form').hidden = true;
  connect();
  if (logPanel.jobId !== null) openLogs(logPanel.jobId, false);
  if (!tasksLoaded) loadTasks();
}

// ---- start ----

setupFilters();
auth.addEventListener('required', askForToken);
$('#token-form').addEventListener('submit', saveToken);
$('#connection-retry').addEventListener('click', connect);
$('#notice-close').addEventListener('click', () => { $('#notice').hidden = true; });
$('#jobs-body').addEventListener('click', onTableClick);
$('#log-close').addEventListener('click', closeLogs);
$('#log-panel').addEventListener('keydown', (event) => {
  if (event.key === 'Escape') closeLogs();
});
$('#schedule-list').addEventListener('click', toggleSchedule);
window.addEventListener('hashchange', followLink);
setInterval(() => {
  table.tick(serverNow());
  tickSchedules();
}, 1000);
setInterval(refreshSchedules, 30_000); // what another page or process changed
updateSummary();
connect();
followLink();
loadTasks();
refreshSchedules();
