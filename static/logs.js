// Log lines per job, kept since the page loaded, and the panel that follows one job's lines.

export const LOG_LIMIT = 200;

const EMPTY = Object.freeze({ lines: [], total: 0 });

/** The last LOG_LIMIT lines of each job; `total` counts every line ever added. */
export class LogBook {
  #entries = new Map();

  add(jobId, line) {
    let entry = this.#entries.get(jobId);
    if (!entry) {
      entry = { lines: [], total: 0 };
      this.#entries.set(jobId, entry);
    }
    entry.lines.push(line);
    if (entry.lines.length > LOG_LIMIT) entry.lines.shift();
    entry.total += 1;
  }

  get(jobId) {
    return this.#entries.get(jobId) ?? EMPTY;
  }

  retainOnly(jobIds) {
    for (const jobId of this.#entries.keys()) {
      if (!jobIds.has(jobId)) this.#entries.delete(jobId);
    }
  }
}

export class LogPanel {
  #root;
  #title;
  #list;
  #empty;
  #book;
  #jobId = null;
  #rendered = 0; // the entry's `total` when the list was last drawn

  constructor(root, book) {
    this.#root = root;
    this.#book = book;
    this.#title = root.querySelector('[data-part="title"]');
    this.#list = root.querySelector('[data-part="lines"]');
    this.#empty = root.querySelector('[data-part="empty"]');
  }

  get jobId() {
    return this.#jobId;
  }

  open(jobId, title) {
    this.#jobId = jobId;
    this.#title.textContent = title;
    this.#list.replaceChildren();
    this.#rendered = 0;
    this.#root.hidden = false;
    this.render();
    this.#list.scrollTop = this.#list.scrollHeight;
  }

  close() {
    this.#jobId = null;
    this.#root.hidden = true;
    this.#list.replaceChildren();
  }

  /** Draws the lines added since the last call; cheap when nothing changed. */
  render() {
    if (this.#jobId === null) return;
    const { lines, total } = this.#book.get(this.#jobId);
    this.#empty.hidden = total > 0;
    const fresh = total - this.#rendered;
    if (fresh <= 0) return;
    const list = this.#list;
    const following = list.scrollHeight - list.scrollTop - list.clientHeight < 8;
    const items = lines.slice(-Math.min(fresh, lines.length)).map(lineItem);
    if (fresh >= lines.length) list.replaceChildren(...items);
    else list.append(...items);
    while (list.childElementCount > LOG_LIMIT) list.firstElementChild.remove();
    this.#rendered = total;
    // Follow new lines unless the reader scrolled up to look at older ones.
    if (following) list.scrollTop = list.scrollHeight;
  }
}

function lineItem(line) {
  const item = document.createElement('li');
  item.textContent = line;
  return item;
}
