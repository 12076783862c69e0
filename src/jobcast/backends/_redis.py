"""What every process of a Redis deployment shares: the key names and the one Lua script
through which every change to a job goes (the Redis backend makes its steps with it).

Layout, under a prefix (``jobcast`` by default):

``{p}:seq``
    the last event id handed out (``INCR``; started from the clock in microseconds, so ids
    still increase if Redis ever loses its data).
``{p}:events``
    the event log, a stream whose entry ids are ``<seq>-0``: SSE ids are global and increasing.
``{p}:job:<id>``
    a hash: ``state``, ``snap`` (the job's snapshot as JSON), ``worker`` (the worker that
    holds it), ``twin`` (its duplicate-check key), ``cancel`` (asked to stop), ``qm`` (its
    member in the queue: :attr:`~jobcast.jobs.Job.order`).
``{p}:jobs``
    a sorted set of job ids by their first event id: the table an API process loads at start.
``{p}:waiting``
    the set of queued job ids, whose size the queue limit checks.
``{p}:ready``
    the jobs that may run, a sorted set whose members all score 0, so that they sort as
    text, as the queue runs: by :attr:`~jobcast.jobs.Job.order` (priority, then age).
``{p}:later``
    the queued jobs still waiting for their ``run_at`` (a delay, or a retry's wait), by it.
``{p}:claimed:<worker>``
    the ids of the jobs a worker took from the queue (running, or about to): what is taken
    back when it dies.
``{p}:schedule:<name>``
    a schedule's state: ``tick`` (the newest due time claimed, each by the one job made with
    the claim), ``paused``, ``last_job``.
``{p}:twin:<task>:<digest>``
    the id of the active job of a task that refuses or joins duplicates.
``{p}:worker:<name>``
    a worker's heartbeat: it expires ``heartbeat_timeout`` after the worker last spoke.
``{p}:workers``
    the names of the workers that have spoken, for counting the live ones.
``{p}:epoch``
    a random token set once: when it changes, Redis has lost its data.
``{p}:rate:<client>``
    a client's token bucket for starting jobs, shared by every API process.
``{p}:cancel``
    the pub/sub channel on which cancels reach the workers.
``{p}:work``
    the pub/sub channel that tells the workers of jobs put on the queue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..events import Event, encode_json, job_payload
from ..exceptions import BackendUnavailable, RateLimited
from ..jobs import Job
from ..settings import Settings

__all__ = [
    "Change",
    "Keys",
    "Refused",
    "Scripts",
    "SharedRate",
    "connect",
    "decode_event",
]


@dataclass(frozen=True, slots=True)
class Keys:
    """The names of a deployment's keys."""

    prefix: str

    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def waiting(self) -> str:
        return f"{self.prefix}:waiting"

    @property
    def ready(self) -> str:
        return f"{self.prefix}:ready"

    @property
    def later(self) -> str:
        return f"{self.prefix}:later"

    def claimed(self, worker: str) -> str:
        return f"{self.prefix}:claimed:{worker}"

    @property
    def work(self) -> str:
        return f"{self.prefix}:work"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}:cancel"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def rate(self, client: str) -> str:
        return f"{self.prefix}:rate:{client}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def schedule(self, name: str) -> str:
        return f"{self.prefix}:schedule:{name}"

    def twin(self, key: str) -> str:
        """The key of a duplicate key (:func:`jobcast.lifecycle.twin_key`)."""
        return f"{self.prefix}:twin:{key}"


def connect(url: str) -> Redis:
    """A client for ``url`` that answers strings and notices a dead connection in time."""
    # One retry on a fresh connection: after a Redis restart every pooled connection is dead,
    # and without it each would fail one request before the pool noticed.
    # A blocking pool: a burst of requests waits for a connection instead of failing.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=10,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[ConnectionError],
    )
    return Redis.from_pool(pool)  # the client owns the pool: closing it closes the pool


# One script makes every change to a job, so the checks and the change are one atomic step:
# a cancel and a worker's start cannot both win; a worker taken for dead cannot publish for a
# job another worker now owns; nothing is ever published for a finished job.
_CHANGE = """
local TERMINAL = {succeeded=true, failed=true, cancelled=true, interrupted=true}
local seq_key, events, job, waiting, jobs, ready, twin, later, work, schedule = unpack(KEYS)
local id, task, name, ts, data, state, snap = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
    ARGV[6], ARGV[7]
local expect_state, expect_worker, set_worker, enqueue = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local max_events, retain_s, create, max_queue, prefix, run_at = ARGV[12], ARGV[13],
    ARGV[14], ARGV[15], ARGV[16], ARGV[17]
local remove = ARGV[18] == '1'  -- a finished job is deleted: the one change it may take
local tick = ARGV[19]  -- the due time of the schedule's tick a new job is
local line = ARGV[20]  -- a log event to publish first (its data), if the change is made

local current = redis.call('HMGET', job, 'state', 'worker')
if create == '1' then
    if current[1] then return {0, 'exists'} end
    if twin ~= '' then
        local other = redis.call('GET', twin)
        if other then
            return {0, 'twin', other, redis.call('HGET', prefix .. ':job:' .. other, 'snap') or ''}
        end
    end
    if redis.call('SCARD', waiting) >= tonumber(max_queue) then return {0, 'full'} end
    if tick ~= '' then
        local claimed = redis.call('HGET', schedule, 'tick')
        if claimed and tonumber(claimed) >= tonumber(tick) then return {0, 'ticked'} end
    end
else
    if not current[1] then return {0, 'gone'} end
    if remove then
        if not TERMINAL[current[1]] then return {0, current[1]} end
    elseif TERMINAL[current[1]] then
        return {0, 'finished'}
    end
    if expect_state ~= '' and current[1] ~= expect_state then return {0, current[1]} end
    if expect_worker ~= '' and current[2] ~= expect_worker then return {0, 'owner'} end
end

if redis.call('EXISTS', seq_key) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', seq_key, now[1] .. string.format('%06d', tonumber(now[2])))
end
if line ~= '' then
    local line_seq = string.format('%d', redis.call('INCR', seq_key))
    redis.call('XADD', events, 'MAXLEN', '~', max_events, line_seq .. '-0',
        'n', 'log', 'j', id, 't', task, 'ts', ts, 'd', line)
end
local seq = string.format('%d', redis.call('INCR', seq_key))
redis.call('XADD', events, 'MAXLEN', '~', max_events, seq .. '-0',
    'n', name, 'j', id, 't', task, 'ts', ts, 'd', data)
redis.call('HSET', job, 'last', seq)
if create == '1' then
    redis.call('HSET', job, 'first', seq, 'task', task, 'twin', twin)
    redis.call('ZADD', jobs, seq, id)
    if twin ~= '' then redis.call('SET', twin, id) end
    if tick ~= '' then redis.call('HSET', schedule, 'tick', tick, 'last_job', id) end
end
if state ~= '' then
    redis.call('HSET', job, 'state', state, 'snap', snap)
    if set_worker ~= '-' then redis.call('HSET', job, 'worker', set_worker) end
    if state == 'queued' then
        redis.call('SADD', waiting, id)
    else
        redis.call('SREM', waiting, id)
        local member = redis.call('HGET', job, 'qm')
        if member then
            redis.call('ZREM', ready, member)
            redis.call('ZREM', later, member)
        end
    end
    if TERMINAL[state] then
        local mine = redis.call('HGET', job, 'twin')
        if mine and mine ~= '' and redis.call('GET', mine) == id then redis.call('DEL', mine) end
        redis.call('HDEL', job, 'cancel')
        redis.call('EXPIRE', job, retain_s)
    end
end
if remove then
    redis.call('DEL', job)
    redis.call('ZREM', jobs, id)
end
if enqueue ~= '' then
    redis.call('HSET', job, 'qm', enqueue)
    if run_at ~= '' then
        redis.call('ZADD', later, run_at, enqueue)
    else
        redis.call('ZADD', ready, 0, enqueue)
    end
    redis.call('PUBLISH', work, '1')
end
return {1, seq}
"""

# Takes up to n jobs for a worker: first the waiting jobs whose time has come become ready;
# then the first n ready ones are the worker's, noted in its claimed set (a job no longer
# queued, cancelled meanwhile, is dropped). Answers the snapshots of the jobs taken.
_CLAIM = """
local ready, later, claimed = KEYS[1], KEYS[2], KEYS[3]
local n, prefix = tonumber(ARGV[1]), ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
for _, member in ipairs(redis.call('ZRANGEBYSCORE', later, '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', later, member)
    redis.call('ZADD', ready, 0, member)
end
local taken = {}
for _, member in ipairs(redis.call('ZRANGE', ready, 0, n - 1)) do
    redis.call('ZREM', ready, member)
    local id = string.match(member, '([^:]+)$')
    local record = redis.call('HMGET', prefix .. ':job:' .. id, 'state', 'snap')
    if record[1] == 'queued' then
        redis.call('SADD', claimed, id)
        table.insert(taken, record[2])
    end
end
return taken
"""

# Gives back a job a worker took: back on the queue if it is still queued (it never
# started); once only, since only one caller removes it from the claimed set.
_UNCLAIM = """
local claimed, ready, job, work = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('SREM', claimed, ARGV[1]) == 0 then return 0 end
local record = redis.call('HMGET', job, 'state', 'qm')
if record[1] == 'queued' and record[2] then
    redis.call('ZADD', ready, 0, record[2])
    redis.call('PUBLISH', work, '1')
    return 1
end
return 0
"""

# Starts a fresh deployment's ids from the clock, as the change script would.
_INIT_SEQ = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])))
end
return redis.call('GET', KEYS[1])
"""


# A token bucket per client, on Redis's clock: every API process counts against the same one.
_TAKE = """
local capacity, refill, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or capacity
local at = tonumber(bucket[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * refill)
if cost > 0 and tokens < 1 then
    return math.ceil((1 - tokens) / refill)
end
tokens = math.min(capacity, tokens - cost)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / refill) + 1)
return 0
"""


class SharedRate:
    """Jobs a client may start per minute, counted in Redis across every API process."""

    def __init__(self, redis: Redis, keys: Keys, per_minute: int, *, url: str) -> None:
        self._keys = keys
        self._url = url
        self._per_minute = per_minute
        self._args = (str(per_minute), repr(per_minute / 60.0))
        self._take: AsyncScript = redis.register_script(_TAKE)

    async def take(self, client: str) -> None:
        retry_after = int(await self._call(client, 1))
        if retry_after:
            raise RateLimited(self._per_minute, retry_after)

    async def give_back(self, client: str) -> None:
        await self._call(client, -1)

    async def _call(self, client: str, cost: int) -> Any:
        try:
            return await self._take(keys=[self._keys.rate(client)], args=[*self._args, cost])
        except (ConnectionError, RedisTimeoutError, OSError) as exc:
            raise BackendUnavailable(self._url, str(exc)) from exc


class Refused(Exception):
    """A change's checks failed: the job was not in the state or hands the change expected."""

    def __init__(self, reason: str, twin: str = "", twin_snapshot: str = "") -> None:
        self.reason = reason
        self.twin = twin
        self.twin_snapshot = twin_snapshot
        super().__init__(reason)


@dataclass(slots=True, frozen=True)
class Change:
    """One event about a job, encoded when made, and the change to the job's record that goes
    with it.

    Snapshot events (a state, or ``progress``) set the record's state and snapshot; ``log``
    events change nothing but the log. The checks: ``expect_state`` and ``expect_worker`` must
    match the record; ``create`` makes the record (refused for a duplicate, ``twin``, or a full
    queue). ``set_worker`` hands the job to a worker (``""``: to none); ``enqueue`` puts it on
    the job queue.
    """

    job_id: str
    task: str
    name: str
    data: str
    state: str = ""
    snapshot: str = ""
    expect_state: str = ""
    expect_worker: str = ""
    set_worker: str | None = None
    enqueue: str = ""  # the job's member in the queue (its order), to queue it
    run_at: float | None = None  # when it may run, if not at once
    create: bool = False
    twin: str = ""
    remove: bool = False  # delete the job (finished), after publishing the event
    schedule: str = ""  # the schedule whose tick a new job is, claimed with it
    tick: float | None = None
    first_line: str = ""  # a log event's data, published first if the change is made

    @classmethod
    def of(
        cls, job: Job, name: str, *, enqueue: bool = False, line: str | None = None, **checks: Any
    ) -> Change:
        """Event ``name`` with the job's snapshot as it is now (queued too, if ``enqueue``;
        after the log line ``line``, if given)."""
        shown = job.snapshot()
        snapshot, data = encode_json(shown), encode_json(job_payload(name, shown))
        return cls(
            job.id,
            job.task,
            name,
            data,
            job.state.value,
            snapshot,
            enqueue=job.order if enqueue else "",
            run_at=job.run_at if enqueue else None,
            first_line="" if line is None else encode_json({"job_id": job.id, "line": line}),
            **checks,
        )

    @classmethod
    def deleted(cls, job: Job) -> Change:
        """A ``deleted`` event, which removes the finished job's record."""
        return cls(job.id, job.task, "deleted", encode_json({"job_id": job.id}), remove=True)

    @classmethod
    def line(cls, job: Job, line: str) -> Change:
        """A ``log`` event."""
        return cls(job.id, job.task, "log", encode_json({"job_id": job.id, "line": line}))


class Scripts:
    """The deployment's scripts, bound to its keys and limits."""

    def __init__(
        self, redis: Redis, keys: Keys, *, max_events: int, retain_s: int, max_queue: int
    ) -> None:
        self.redis = redis
        self.keys = keys
        self._limits = (str(max_events), str(retain_s), str(max_queue))
        self._change: AsyncScript = redis.register_script(_CHANGE)
        self._claim: AsyncScript = redis.register_script(_CLAIM)
        self._unclaim: AsyncScript = redis.register_script(_UNCLAIM)
        self._init_seq: AsyncScript = redis.register_script(_INIT_SEQ)

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> Scripts:
        return cls(
            redis,
            Keys(settings.redis_prefix),
            max_events=settings.retain_events,
            retain_s=max(1, int(settings.retain_days * 86400)),
            max_queue=settings.max_queue,
        )

    async def last_seq(self) -> int:
        """The newest event id handed out (starting the ids of a fresh deployment)."""
        return int(await self._init_seq(keys=[self.keys.seq]))

    async def apply(self, change: Change, pipe: Pipeline | None = None) -> int:
        """Make ``change`` and publish its event; return the event id.

        Raises :class:`Refused` when a check fails. With ``pipe``, the call is only queued
        there, and :meth:`result` reads its answer once the pipeline ran.
        """
        keys = self.keys
        max_events, retain_s, max_queue = self._limits
        answer = await self._change(
            keys=[
                keys.seq,
                keys.events,
                keys.job(change.job_id),
                keys.waiting,
                keys.jobs,
                keys.ready,
                change.twin,
                keys.later,
                keys.work,
                keys.schedule(change.schedule) if change.schedule else "",
            ],
            args=[
                change.job_id,
                change.task,
                change.name,
                repr(time.time()),
                change.data,
                change.state,
                change.snapshot,
                change.expect_state,
                change.expect_worker,
                "-" if change.set_worker is None else change.set_worker,
                change.enqueue,
                max_events,
                retain_s,
                "1" if change.create else "0",
                max_queue,
                keys.prefix,
                "" if change.run_at is None else repr(change.run_at),
                "1" if change.remove else "0",
                "" if change.tick is None else repr(change.tick),
                change.first_line,
            ],
            client=pipe,
        )
        return self.result(answer) if pipe is None else 0

    async def claim(self, worker: str, n: int) -> list[str]:
        """Take up to ``n`` jobs off the queue for ``worker``: their snapshots, as JSON."""
        keys = self.keys
        answer: list[str] = await self._claim(
            keys=[keys.ready, keys.later, keys.claimed(worker)], args=[n, keys.prefix]
        )
        return answer

    async def unclaim(self, worker: str, job_id: str) -> bool:
        """Put a job ``worker`` took back on the queue, if it is still queued; whether it was."""
        keys = self.keys
        answer = await self._unclaim(
            keys=[keys.claimed(worker), keys.ready, keys.job(job_id), keys.work], args=[job_id]
        )
        return bool(answer)

    @staticmethod
    def result(answer: Any) -> int:
        """The event id of one change's answer, or :class:`Refused`."""
        if isinstance(answer, Exception):
            raise answer
        ok, *rest = answer
        if not ok:
            raise Refused(*rest)
        return int(rest[0])


def decode_event(entry_id: str, fields: Mapping[str, str]) -> Event:
    """The event a stream entry holds, encoded for the wire."""
    return Event.from_json(
        int(entry_id.partition("-")[0]),
        float(fields["ts"]),
        fields["n"],
        job_id=fields["j"],
        task=fields["t"],
        payload=fields["d"],
    )
