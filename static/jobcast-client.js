// jobcast's client for browsers: start jobs, and follow them live over Server-Sent Events.
//
// An ES module with no dependency and no build step; its types are in jobcast-client.d.ts.
// A stream resumes where it stopped, without gaps or duplicates: the browser reconnects with
// Last-Event-ID by itself, and where it gives up (an answer that is not a stream) the module
// asks the server why, then resumes from the last id it has seen, ends, or reports the error.

/** The states a job ends in. */
export const TERMINAL_STATES = Object.freeze(['succeeded', 'failed', 'cancelled', 'interrupted']);

/** Every event the streams send; each carries a job's snapshot, except these four. */
export const EVENT_TYPES = Object.freeze([
  'snapshot', 'reset', 'log', 'deleted',
  'queued', 'running', 'progress', 'retrying', 'succeeded', 'failed', 'cancelled', 'interrupted',
]);

const TERMINAL = new Set(TERMINAL_STATES);
// Waits before asking again, after the browser gave up on a stream and the server could not
// be reached or was busy; a Retry-After from the server wins.
const RETRY_DELAYS_MS = [250, 500, 1000, 2000, 5000, 10000];

/** A failed request: `status` (0 when the server could not be reached) and the server's message. */
export class JobcastError extends Error {
  constructor(message, { status = 0, body = null, headers = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'JobcastError';
    this.status = status;
    this.body = body;
    this.detail = body && typeof body === 'object' && 'detail' in body ? body.detail : body;
    this.job = body && typeof body === 'object' && body.job ? body.job : null;
    const retryAfter = Number.parseInt(headers?.get('Retry-After') ?? '', 10);
    this.retryAfter = Number.isFinite(retryAfter) ? retryAfter : null;
  }
}

/**
 * Calls the API: resolves to {status, data, headers} for a 2xx answer (`data` is the JSON
 * body, or null), rejects with a JobcastError otherwise.
 */
export async function request(method, path, { body, query, token, baseUrl } = {}) {
  const url = apiUrl(baseUrl, path, query);
  const response = await send(url, method, token, body);
  if (!response.ok) throw await failure(url, response);
  return { status: response.status, data: await readBody(url, response), headers: response.headers };
}

/**
 * Starts a job of `task` with `params`; resolves to the job's snapshot. Options: `delay`
 * (seconds), `run_at` (a Date, or ISO 8601 text with its offset), `priority`, `token`,
 * `baseUrl`. Rejects with a JobcastError carrying the status and the server's message.
 */
export async function startJob(task, params = {}, options = {}) {
  const { delay, priority, run_at: runAt } = options;
  const query = {
    delay,
    priority,
    run_at: runAt instanceof Date ? runAt.toISOString() : runAt,
  };
  const name = segment(task);
  if (name === null) throw new JobcastError(`no task named '${task}'`, { status: 404 });
  const path = `/api/tasks/${name}/jobs`;
  const { data } = await request('POST', path, { ...options, body: params ?? {}, query });
  return data;
}

/**
 * Follows one job: its whole history, then live, until it ends (`end(job)` is called).
 * Options: `lastEventId` (resume after it), `token`, `baseUrl`. Returns a handle with close().
 */
export function watchJob(id, handlers = {}, options = {}) {
  const name = segment(id);
  const job = `/api/jobs/${name}`;
  const unknown = name === null ? new JobcastError(`no job with id '${id}'`, { status: 404 }) : null;
  return new Watch(`${job}/events`, {}, handlers, options, job, unknown);
}

/**
 * Follows every job (or those of `task`): a `snapshot` first, then every event, live.
 * Options: `task`, `lastEventId`, `token`, `baseUrl`. Returns a handle with close().
 */
export function watchJobs(handlers = {}, options = {}) {
  return new Watch('/api/events', { task: options.task }, handlers, options, null, null);
}

class Watch {
  #path;
  #query;
  #handlers;
  #options;
  #jobPath; // the job a job stream follows; null for the stream of every job
  #source = null;
  #lastSeq;
  #status = '';
  #closed = false;
  #retries = 0;
  #timer = 0;

  // `refusal`: the error the server would answer, for a job no URL can name.
  constructor(path, query, handlers, options, jobPath, refusal) {
    this.#path = path;
    this.#query = query;
    this.#handlers = handlers;
    this.#options = options;
    this.#jobPath = jobPath;
    this.#lastSeq = positiveInteger(options.lastEventId) ?? 0;
    this.#setStatus('connecting');
    // Told after the handle is returned, as a refusal from the server would be.
    if (refusal) {
      queueMicrotask(() => {
        if (!this.#closed) this.#fail(refusal);
      });
    } else if (options.token) {
      // With a token, ask first: a read protected by it answers a request that sends the
      // header with the cookie EventSource then carries, and a refused token shows at once.
      this.#check();
    } else {
      this.#open();
    }
  }

  /** The id of the last event handed to the handlers (0 before any). */
  get lastEventId() {
    return this.#lastSeq;
  }

  /** 'connecting', 'live', 'reconnecting' or 'closed'. */
  get status() {
    return this.#status;
  }

  close() {
    this.#stop();
    this.#setStatus('closed');
  }

  #stop() {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#source?.close();
    this.#source = null;
  }

  #url() {
    return apiUrl(this.#options.baseUrl, this.#path, {
      ...this.#query,
      last_event_id: this.#lastSeq || undefined,
    });
  }

  #open() {
    const url = this.#url();
    const source = new EventSource(url, { withCredentials: sendsCookies(url, this.#options.token) });
    this.#source = source;
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => this.#receive(source, type, event));
    }
    source.onopen = () => {
      this.#retries = 0;
      this.#setStatus('live');
    };
    source.onerror = () => {
      if (this.#source !== source) return;
      this.#setStatus('reconnecting');
      // While CONNECTING the browser retries by itself, with Last-Event-ID. CLOSED means it
      // gave up: an answer that is not a stream, such as a 204, a 401 or a 503.
      if (source.readyState !== EventSource.CLOSED) return;
      source.close();
      this.#source = null;
      this.#check();
    };
  }

  /** Asks the server what the stream would answer now, and acts on it. */
  async #check() {
    const url = this.#url();
    let status;
    try {
      status = await probe(url, this.#options.token);
    } catch (error) {
      if (this.#closed) return;
      if (error.status === 0 || error.status === 429 || error.status >= 500) this.#retryLater(error);
      else this.#fail(error);
      return;
    }
    if (this.#closed) return;
    if (status === 204 && this.#jobPath) await this.#endAsTheServerSays();
    else this.#open();
  }

  #retryLater(error) {
    this.#setStatus('reconnecting', error);
    const delay = error.retryAfter !== null
      ? error.retryAfter * 1000
      : RETRY_DELAYS_MS[Math.min(this.#retries, RETRY_DELAYS_MS.length - 1)];
    this.#retries += 1;
    this.#timer = setTimeout(() => this.#check(), delay);
  }

  #receive(source, type, event) {
    if (this.#source !== source) return;
    let data;
    try {
      data = event.data ? JSON.parse(event.data) : {};
    } catch (cause) {
      this.#report(new JobcastError(`the server sent a ${type} event whose data is not JSON`, { cause }));
      return;
    }
    if (type === 'reset') {
      // The snapshot that follows is the new truth, whatever its id.
      this.#lastSeq = 0;
    } else {
      const seq = Number.isInteger(data.seq) ? data.seq : Number.parseInt(event.lastEventId, 10);
      if (seq > 0) {
        if (seq <= this.#lastSeq) return; // seen already
        this.#lastSeq = seq;
      }
    }
    this.#handlers[type]?.(data);
    this.#handlers.event?.(type, data);
    if (this.#jobPath) {
      const job = data.job ?? data.jobs?.[0];
      if (job && TERMINAL.has(job.state)) this.#end(job);
    }
  }

  /** A job stream answered 204: the end was seen already; the job as it ended. */
  async #endAsTheServerSays() {
    try {
      const { data } = await request('GET', this.#jobPath, this.#options);
      if (!this.#closed) this.#end(data);
    } catch (error) {
      if (!this.#closed) this.#fail(error);
    }
  }

  #end(job) {
    this.#stop();
    this.#handlers.end?.(job);
    this.#setStatus('closed');
  }

  #fail(error) {
    this.#stop();
    this.#setStatus('closed', error);
    this.#report(error);
  }

  #report(error) {
    if (this.#handlers.error) this.#handlers.error(error);
    else console.error('jobcast:', error);
  }

  #setStatus(status, error) {
    if (status === this.#status && !error) return;
    this.#status = status;
    this.#handlers.status?.(status, error);
  }
}

// ---- HTTP ----

function apiUrl(baseUrl, path, query = {}) {
  const root = (baseUrl ?? '').replace(/\/+$/, '');
  const url = new URL(root + path, globalThis.location?.href);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(name, String(value));
  }
  return url;
}

// The stream cookie a token earns must travel to another origin too (which then has to list
// this page's origin in JOBCAST_CORS_ORIGINS); without a token there is nothing to carry.
function sendsCookies(url, token) {
  return Boolean(token) && url.origin !== globalThis.location?.origin;
}

// What a server's token may hold (RFC 6750's token68), as jobcast's settings require.
const TOKEN = /^[A-Za-z0-9._~+/-]+=*$/;

async function send(url, method, token, body, signal) {
  const headers = { Accept: 'application/json' };
  if (token && !TOKEN.test(token)) {
    // Refused as the server would refuse it: a header cannot carry some such text, and
    // fetch would then fail as if the server could not be reached.
    throw new JobcastError(
      'the token is not one a jobcast server could have: a token holds only letters, digits and - . _ ~ + / (then = padding)',
      { status: 401 },
    );
  }
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  // Outside the try: a body JSON cannot carry (a BigInt, a cycle) is the caller's TypeError,
  // not a server that could not be reached.
  const json = body === undefined ? undefined : JSON.stringify(body);
  try {
    return await fetch(url, {
      method,
      headers,
      body: json,
      credentials: sendsCookies(url, token) ? 'include' : 'same-origin',
      signal,
    });
  } catch (cause) {
    throw unreachable(url, cause);
  }
}

/** The status a GET of the stream at `url` would answer with, without reading the stream. */
async function probe(url, token) {
  const head = await send(url, 'HEAD', token);
  if (head.ok) return head.status;
  if (head.status === 429 || head.status >= 500) throw await failure(url, head);
  // A HEAD answer has no body: ask once more, for the server's own words.
  const controller = new AbortController();
  const answer = await send(url, 'GET', token, undefined, controller.signal);
  if (answer.ok) controller.abort(); // it is a stream now: the next open will read it
  else throw await failure(url, answer);
  return answer.status;
}

async function readBody(url, response) {
  let text;
  try {
    text = await response.text();
  } catch (cause) {
    throw unreachable(url, cause);
  }
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function failure(url, response) {
  const body = await readBody(url, response).catch(() => null);
  const message = serverMessage(body) || `the jobcast server at ${url.origin} answered ${response.status}`;
  return new JobcastError(message, { status: response.status, body, headers: response.headers });
}

function unreachable(url, cause) {
  return new JobcastError(
    `could not reach the jobcast server at ${url.origin}: check that it is running and that the URL is right`,
    { cause },
  );
}

/** The server's `detail`, as one line: a 422's items as `field: problem`. */
function serverMessage(body) {
  const detail = body && typeof body === 'object' && 'detail' in body ? body.detail : body;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) return detail.map(validationItem).join('; ');
  return detail ? JSON.stringify(detail) : '';
}

function validationItem(item) {
  if (!item || typeof item !== 'object') return String(item);
  const loc = Array.isArray(item.loc) ? item.loc.filter((part, index) => index > 0 || part !== 'body') : [];
  const message = item.msg ?? JSON.stringify(item);
  return loc.length ? `${loc.join('.')}: ${message}` : message;
}

// `value` as one segment of a path; null for '', '.' and '..', which no URL can carry as one:
// it drops a dot segment with the segment before it, even percent-encoded.
function segment(value) {
  const text = String(value ?? '');
  return text === '' || text === '.' || text === '..' ? null : encodeURIComponent(text);
}

function positiveInteger(value) {
  const number = typeof value === 'number' ? value : Number.parseInt(value ?? '', 10);
  return Number.isSafeInteger(number) && number > 0 ? number : null;
}
