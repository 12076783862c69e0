// The panel that follows one job: its log lines as the server keeps them, then live, and,
// once the job has failed, its error as the last line.

import { TERMINAL_STATES, errorText, jobLink, shortId } from './format.js';
import { watchJob } from './jobcast-client.js';

export const LOG_LIMIT = 200;

export class LogPanel {
  #root;
  #title;
  #list;
  #empty;
  #errorItem;
  #onChange;
  #connection;
  #watch = null;
  #jobId = null;
  #job = null;
  #heard = false; // the job's stream has said something
  #problem = '';
  #lines = []; // the last LOG_LIMIT lines
  #total = 0; // every line received
  #rendered = 0; // `#total` when the list was last drawn

  /**
   * onChange() asks for a render (the page draws once per frame); connection() gives the
   * client module's options (the token).
   */
  constructor(root, { onChange, connection }) {
    this.#root = root;
    this.#onChange = onChange;
    this.#connection = connection;
    this.#title = root.querySelector('[data-part="title"]');
    this.#list = root.querySelector('[data-part="lines"]');
    this.#empty = root.querySelector('[data-part="empty"]');
    this.#errorItem = Object.assign(document.createElement('li'), { className: 'log-error' });
  }

  get jobId() {
    return this.#jobId;
  }

  /** Follows job `jobId`; `job` is its snapshot if the page has one already. */
  open(jobId, job) {
    this.close();
    this.#jobId = jobId;
    this.#job = job ?? null;
    this.#title.href = jobLink(jobId);
    this.#root.hidden = false;
    this.#watch = watchJob(jobId, {
      log: (event) => this.#add(event.line),
      event: (type, data) => {
        this.#heard = true;
        this.#job = data.job ?? data.jobs?.[0] ?? this.#job;
        this.#onChange();
      },
      end: () => {
        this.#heard = true;
        this.#onChange();
      },
      error: (error) => {
        this.#problem = error.message;
        this.#onChange();
      },
    }, this.#connection());
    this.render();
  }

  close() {
    this.#watch?.close();
    this.#watch = null;
    this.#jobId = null;
    this.#job = null;
    this.#heard = false;
    this.#problem = '';
    this.#lines = [];
    this.#total = 0;
    this.#rendered = 0;
    this.#root.hidden = true;
    this.#list.replaceChildren();
  }

  #add(line) {
    this.#lines.push(line);
    if (this.#lines.length > LOG_LIMIT) this.#lines.shift();
    this.#total += 1;
  }

  /** Draws what changed since the last call; cheap when nothing did. */
  render() {
    if (this.#jobId === null) return;
    const list = this.#list;
    const following = list.scrollHeight - list.scrollTop - list.clientHeight < 8;
    this.#title.textContent = this.#job ? `${this.#job.task} · ${shortId(this.#jobId)}` : shortId(this.#jobId);

    const fresh = this.#total - this.#rendered;
    if (fresh > 0) {
      const items = this.#lines.slice(-Math.min(fresh, this.#lines.length)).map(lineItem);
      if (fresh >= this.#lines.length) list.replaceChildren(...items);
      else list.append(...items);
      this.#rendered = this.#total;
    }
    const error = this.#job && TERMINAL_STATES.has(this.#job.state) ? errorText(this.#job.error) : '';
    if (error) {
      this.#errorItem.textContent = error;
      if (list.lastElementChild !== this.#errorItem) list.append(this.#errorItem);
    } else {
      this.#errorItem.remove();
    }
    while (list.childElementCount > LOG_LIMIT + (error ? 1 : 0)) list.firstElementChild.remove();

    this.#empty.textContent = this.#emptyText();
    this.#empty.hidden = this.#total > 0 && !this.#problem;
    // Follow new lines unless the reader scrolled up to look at older ones.
    if (following) list.scrollTop = list.scrollHeight;
  }

  #emptyText() {
    if (this.#problem) return `Could not follow this job: ${this.#problem}`;
    if (!this.#heard) return 'Loading…';
    if (this.#total > 0) return '';
    return this.#job && TERMINAL_STATES.has(this.#job.state) ? 'This job logged nothing.' : 'No log lines yet.';
  }
}

function lineItem(line) {
  const item = document.createElement('li');
  item.textContent = line;
  return item;
}
