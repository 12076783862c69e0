// Types of jobcast-client.js, jobcast's client for browsers.

export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';

export interface Progress {
  current: number;
  total: number | null;
  /** null while `total` is unknown. */
  percent: number | null;
  message: string | null;
  /** Items per second, smoothed. */
  rate: number | null;
  elapsed_s: number;
  /** null while `total` is unknown. */
  eta_s: number | null;
}

export interface JobErrorInfo {
  type: string;
  message: string;
}

/** A job's snapshot, as every answer and every event shows it. */
export interface Job {
  id: string;
  task: string;
  params: Record<string, unknown>;
  state: JobState;
  progress: Progress | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  result: unknown;
  error: JobErrorInfo | null;
  /** The attempt that runs, or ran last (1-based). */
  attempt: number;
  max_attempts: number;
  /** When the job became runnable, if not at once (a delay, a retry's wait, a schedule). */
  run_at: string | null;
  priority: number;
  schedule: string | null;
  /** Asked to stop, and not ended yet. */
  cancelling: boolean;
}

interface Stamped {
  /** The event's id: strictly increasing, unique across the service. */
  seq: number;
  /** When it happened, in Unix seconds. */
  ts: number;
}

export interface JobEvent extends Stamped {
  job: Job;
}

export interface RetryingEvent extends JobEvent {
  /** What failed the attempt. */
  error: JobErrorInfo;
  /** The attempt that comes next. */
  attempt: number;
  run_at: string | null;
}

export interface LogEvent extends Stamped {
  job_id: string;
  line: string;
}

export interface DeletedEvent extends Stamped {
  job_id: string;
}

export interface SnapshotEvent extends Stamped {
  /** On the stream of every job: the active jobs and the newest finished ones, newest first.
   * On a job's stream (after a reset): that job. */
  jobs: Job[];
}

/** What the client missed is no longer kept: the snapshot that follows is the new truth. */
export interface ResetEvent {
  ts: number;
  last_event_id: number;
  first_retained: number;
  reason: string;
}

export interface EventMap {
  snapshot: SnapshotEvent;
  reset: ResetEvent;
  log: LogEvent;
  deleted: DeletedEvent;
  queued: JobEvent;
  running: JobEvent;
  progress: JobEvent;
  retrying: RetryingEvent;
  succeeded: JobEvent;
  failed: JobEvent;
  cancelled: JobEvent;
  interrupted: JobEvent;
}

export type EventType = keyof EventMap;

/** The stream's state: `reconnecting` while the server is away; `closed` once closed, ended
 * or failed. */
export type StreamStatus = 'connecting' | 'live' | 'reconnecting' | 'closed';

export type Handlers = {
  [T in EventType]?: (data: EventMap[T]) => void;
} & {
  /** Every event, after its own handler. */
  event?: <T extends EventType>(type: T, data: EventMap[T]) => void;
  /** The stream's state changed, or a try to reconnect failed: `error` says why it is
   * reconnecting or closed, when that is known. */
  status?: (status: StreamStatus, error?: JobcastError) => void;
  /** A job's stream ended: the job as it ended. */
  end?: (job: Job) => void;
  /** The stream stopped for good (a refused token, an unknown job or task: its status is
   * `closed` by then), or the server sent an event that is not JSON (the stream goes on).
   * Without this handler errors go to the console. */
  error?: (error: JobcastError) => void;
};

export interface StreamHandle {
  /** Stops following; no handler is called after it but `status('closed')`. */
  close(): void;
  /** The id of the last event handed to the handlers (0 before any): pass it as
   * `lastEventId` to resume from there. */
  readonly lastEventId: number;
  readonly status: StreamStatus;
}

export interface ConnectionOptions {
  /** The server's token (JOBCAST_TOKEN), sent as `Authorization: Bearer`. */
  token?: string;
  /** Where jobcast's routes are, when not at this page's origin root. Another origin must be
   * listed in the server's JOBCAST_CORS_ORIGINS. */
  baseUrl?: string;
}

export interface StartOptions extends ConnectionOptions {
  /** Seconds to wait before the job may run. */
  delay?: number;
  /** When the job may run: a Date, or ISO 8601 text with its offset. */
  run_at?: Date | string;
  /** Higher runs first; first in, first out within one priority. */
  priority?: number;
}

export interface WatchOptions extends ConnectionOptions {
  /** Resume after this event id: nothing before it is handed over again. */
  lastEventId?: number;
}

export interface WatchJobsOptions extends WatchOptions {
  /** Only the jobs of this task. */
  task?: string;
}

/** A failed request. */
export class JobcastError extends Error {
  name: 'JobcastError';
  /** The HTTP status; 0 when the server could not be reached. */
  status: number;
  /** The answer's body, parsed. */
  body: unknown;
  /** Its `detail`: text, or a 422's list of problems, one per field. */
  detail: unknown;
  /** A 409's job: the one already queued or running with the same params. */
  job: Job | null;
  /** Seconds to wait before asking again (429, 503), when the server said. */
  retryAfter: number | null;
}

export const TERMINAL_STATES: readonly JobState[];
export const EVENT_TYPES: readonly EventType[];

/** Starts a job; resolves to its snapshot, or rejects with a JobcastError. */
export function startJob(
  task: string,
  params?: Record<string, unknown>,
  options?: StartOptions,
): Promise<Job>;

/** Follows one job: its whole history, then live, until it ends. */
export function watchJob(id: string, handlers?: Handlers, options?: WatchOptions): StreamHandle;

/** Follows every job (or one task's): a snapshot, then every event, live. */
export function watchJobs(handlers?: Handlers, options?: WatchJobsOptions): StreamHandle;

/** Calls any route of the API: resolves for a 2xx answer, rejects with a JobcastError. */
export function request(
  method: string,
  path: string,
  options?: ConnectionOptions & { body?: unknown; query?: Record<string, unknown> },
): Promise<{ status: number; data: unknown; headers: Headers }>;
