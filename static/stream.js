// One EventSource on the jobs stream, reporting parsed events and the connection status.

const EVENT_TYPES = [
  'snapshot', 'reset', 'log',
  'queued', 'running', 'progress', 'retrying', 'succeeded', 'failed', 'cancelled', 'interrupted',
  'deleted',
];

export class LiveStream {
  #source = null;
  #onEvent;
  #onStatus;

  /**
   * onEvent(type, data, lastEventId) for every event; onStatus('live' | 'reconnecting' | 'offline').
   */
  constructor({ onEvent, onStatus }) {
    this.#onEvent = onEvent;
    this.#onStatus = onStatus;
  }

  open(url) {
    this.close();
    const source = new EventSource(url);
    this.#source = source;
    this.#onStatus('reconnecting');
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => this.#dispatch(type, event));
    }
    source.onopen = () => this.#onStatus('live');
    // The browser retries by itself (with Last-Event-ID) while the state is CONNECTING;
    // CLOSED means it gave up (a 204, a non-200 answer or a wrong content type).
    source.onerror = () => {
      this.#onStatus(source.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting');
    };
  }

  close() {
    this.#source?.close();
    this.#source = null;
  }

  #dispatch(type, event) {
    let data;
    try {
      data = event.data ? JSON.parse(event.data) : {};
    } catch {
      console.warn(`jobcast: ignored a ${type} event whose data is not JSON`, event.data);
      return;
    }
    this.#onEvent(type, data, event.lastEventId);
  }
}
