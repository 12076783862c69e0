// Pure formatting helpers: job data in, short human text out.

import { TERMINAL_STATES as TERMINAL } from './jobcast-client.js';

export const TERMINAL_STATES = new Set(TERMINAL);

/** Characters a tooltip shows at most. */
export const TOOLTIP_LIMIT = 2000;

export function shortId(id) {
  return String(id).slice(0, 8);
}

/** The page's link to a job: loading the page with it opens the job. */
export function jobLink(id) {
  return `#job=${encodeURIComponent(id)}`;
}

/** The job a page link names, or null. */
export function jobInLink(hash) {
  const match = /^#job=(.+)$/.exec(hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

export function truncate(text, limit) {
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

export function parseTime(iso) {
  const ms = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(ms) ? null : ms;
}

export function formatClock(iso) {
  const ms = parseTime(iso);
  if (ms === null) return '';
  const date = new Date(ms);
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '';
  const safe = Math.max(0, seconds);
  if (safe < 10) return `${safe.toFixed(1)}s`;
  const whole = Math.round(safe);
  if (whole < 60) return `${whole}s`;
  const minutes = Math.floor(whole / 60);
  if (minutes < 60) return `${minutes}m ${pad(whole % 60)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${pad(minutes % 60)}m`;
  return `${Math.floor(hours / 24)}d ${pad(hours % 24)}h`;
}

function pad(value) {
  return String(value).padStart(2, '0');
}

/** Seconds a job has run: up to its end, or up to `now` (ms) while it runs. */
export function jobDuration(job, now) {
  const start = parseTime(job.started_at);
  if (start === null) return null;
  const end = parseTime(job.finished_at) ?? (job.state === 'running' ? now : null);
  return end === null ? null : (end - start) / 1000;
}

export function formatNumber(value) {
  if (typeof value !== 'number') return '';
  return Number.isInteger(value) ? String(value) : value.toFixed(2).replace(/\.?0+$/, '');
}

export function formatRate(rate) {
  if (typeof rate !== 'number' || !Number.isFinite(rate)) return '';
  const digits = rate >= 100 ? 0 : rate >= 10 ? 1 : 2;
  return `${rate.toFixed(digits)}/s`;
}

export function formatCount(progress) {
  if (typeof progress.current !== 'number') return '';
  const current = formatNumber(progress.current);
  return progress.total === null || progress.total === undefined
    ? current
    : `${current}/${formatNumber(progress.total)}`;
}

function compactValue(value) {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

export function summarizeParams(params) {
  if (!params || typeof params !== 'object') return '';
  return Object.entries(params)
    .map(([key, value]) => `${key}=${compactValue(value)}`)
    .join(', ');
}

export function errorText(error) {
  if (error === null || error === undefined) return '';
  if (typeof error === 'string') return error;
  if (error.type && error.message) return `${error.type}: ${error.message}`;
  return error.message || error.type || JSON.stringify(error);
}

/** JSON on one line, with a space after each `,` and `:` so that it wraps between tokens. */
export function inlineJson(value) {
  if (Array.isArray(value)) return `[${value.map(inlineJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    const members = Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${inlineJson(item)}`);
    return `{${members.join(', ')}}`;
  }
  return JSON.stringify(value) ?? String(value);
}

/** JSON indented, one member per line. */
export function prettyJson(value) {
  return JSON.stringify(value, null, 2) ?? String(value);
}
