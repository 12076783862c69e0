// What a job ended with, readable whole: its result as JSON that wraps between tokens, its
// error in full. A long one shows its first line, which opens to the rest.

import { TOOLTIP_LIMIT, errorText, inlineJson, prettyJson, truncate } from './format.js';

const SHOWN_WHOLE = 120; // characters shown as they are; past it the outcome collapses
const PREVIEW = 90;

const shown = new WeakMap(); // element → the outcome it shows, so an unchanged one stays open

/** Shows the outcome of `job` in `element`: its error, its result, or why it has none. */
export function showOutcome(element, job) {
  const outcome = outcomeOf(job);
  const key = `${outcome.kind}\n${outcome.line}`;
  if (shown.get(element) === key) return;
  shown.set(element, key);
  element.dataset.kind = outcome.kind;
  element.title = truncate(outcome.line, TOOLTIP_LIMIT);
  if (outcome.line.length <= SHOWN_WHOLE) {
    element.replaceChildren(outcome.line);
    return;
  }
  const details = document.createElement('details');
  const summary = document.createElement('summary');
  summary.textContent = truncate(outcome.line, PREVIEW);
  const whole = document.createElement(outcome.kind === 'result' ? 'pre' : 'p');
  whole.className = 'outcome-whole';
  whole.textContent = outcome.whole();
  details.append(summary, whole);
  element.replaceChildren(details);
}

function outcomeOf(job) {
  const error = errorText(job.error);
  if (error) return { kind: 'error', line: error, whole: () => error };
  if (job.state === 'succeeded' && job.result !== null && job.result !== undefined) {
    return { kind: 'result', line: inlineJson(job.result), whole: () => prettyJson(job.result) };
  }
  if (job.state === 'interrupted') {
    const note = 'The server stopped during this job.';
    return { kind: 'note', line: note, whole: () => note };
  }
  return { kind: '', line: '', whole: () => '' };
}
