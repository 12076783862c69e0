"""Per-client limits: who a client is, how fast it may start jobs, how many streams it holds.

Everything here is in memory, touched only on the event loop, and bounded in size whatever the
clients do: a flood of addresses evicts the oldest entries rather than growing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from ._wire import safe_text, travel_problem
from .exceptions import RateLimited, StreamsFull, TooManyStreams

__all__ = [
    "JobRate",
    "StartRate",
    "ParamsProblem",
    "Slot",
    "StreamSlots",
    "check_params",
    "client_key",
    "too_deep",
]

#: Seconds a client refused for holding too many streams is told to wait.
STREAM_RETRY_AFTER = 5


def client_key(scope: Any) -> str:
    """The address limits are counted by: the client's IP, or its /64 for IPv6.

    One IPv6 host usually has a whole /64 to pick addresses from, so counting single IPv6
    addresses would let one client multiply its limits at will. Behind a reverse proxy this is
    the proxy's address unless the server trusts its ``X-Forwarded-For`` (uvicorn's
    ``--forwarded-allow-ips``).
    """
    client = scope.get("client")
    if not client:
        return "unknown"
    host = str(client[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


class StartRate(Protocol):
    """How many jobs a client may start: one process's :class:`JobRate`, or one shared by
    every API process through Redis."""

    async def take(self, client: str) -> None:
        """Count one start; raise :class:`~jobcast.exceptions.RateLimited` past the limit."""
        ...

    async def give_back(self, client: str) -> None:
        """Undo a :meth:`take` whose start made no job."""
        ...


class JobRate:
    """At most ``per_minute`` job starts per client per minute: a token bucket per client.

    A client may start ``per_minute`` jobs at once, then one more every ``60 / per_minute``
    seconds. At most ``max_clients`` buckets are kept; the least recently used go first (a
    client forgotten that way gets a full bucket back, which errs on the side of letting
    honest clients through).
    """

    def __init__(self, per_minute: int, *, max_clients: int = 10_000) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute!r}")
        self.per_minute = per_minute
        self._max_clients = max_clients
        self._refill = per_minute / 60.0  # tokens per second
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, client: str, now: float | None = None) -> None:
        """Raise :class:`~jobcast.exceptions.RateLimited` if ``client`` may not start a job now."""
        tokens = self._tokens(client, time.monotonic() if now is None else now)
        if tokens < 1:
            retry_after = max(1, math.ceil((1 - tokens) / self._refill))
            raise RateLimited(self.per_minute, retry_after)

    def spend(self, client: str, now: float | None = None) -> None:
        """Count one job started by ``client``."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens(client, now)
        self._buckets[client] = (tokens - 1, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)

    async def take(self, client: str) -> None:
        """:meth:`check`, then :meth:`spend` (the :class:`StartRate` of one process)."""
        self.check(client)
        self.spend(client)

    async def give_back(self, client: str) -> None:
        """:meth:`refund`."""
        self.refund(client)

    def refund(self, client: str, now: float | None = None) -> None:
        """Give back what :meth:`spend` took, for a start that made no job."""
        now = time.monotonic() if now is None else now
        self._buckets[client] = (min(float(self.per_minute), self._tokens(client, now) + 1), now)

    def _tokens(self, client: str, now: float) -> float:
        bucket = self._buckets.get(client)
        if bucket is None:
            return float(self.per_minute)
        tokens, since = bucket
        return min(float(self.per_minute), tokens + (now - since) * self._refill)


@dataclass(slots=True, eq=False)
class Slot:
    """One open stream, as the limits and the send watchdog see it."""

    client: str
    #: When the write in progress started (``time.monotonic()``), or 0 when none is.
    sending_since: float = 0.0
    #: The task that runs the stream's response, which a drop cancels; set once it runs.
    task: asyncio.Task[Any] | None = None
    dropped: bool = False


@dataclass(slots=True)
class StreamSlots:
    """Counts open streams per client and in total, and drops clients that stopped reading.

    A stream takes a slot before it answers (so a refusal is a clean 429 or 503) and gives it
    back when its response ends, however it ends. Instead of a timeout around every write
    (sse-starlette's ``send_timeout`` opens an anyio cancel scope per write, measured at
    about 7 µs against 0.2 µs for the write itself), each write stamps its start time and one
    watchdog checks every stream a few times per timeout.
    """

    per_client: int
    total: int
    send_timeout: float | None = None
    _open: set[Slot] = field(default_factory=set, init=False)
    _per_client: Counter[str] = field(default_factory=Counter, init=False)

    def take(self, client: str) -> Slot:
        """A slot for a new stream of ``client``; raises when a limit is reached."""
        if len(self._open) >= self.total:
            raise StreamsFull(self.total, STREAM_RETRY_AFTER)
        if self._per_client[client] >= self.per_client:
            raise TooManyStreams(self.per_client, STREAM_RETRY_AFTER)
        slot = Slot(client)
        self._open.add(slot)
        self._per_client[client] += 1
        return slot

    def give_back(self, slot: Slot) -> None:
        """Release ``slot``; releasing it twice is harmless."""
        if slot not in self._open:
            return
        self._open.remove(slot)
        self._per_client[slot.client] -= 1
        if not self._per_client[slot.client]:
            del self._per_client[slot.client]

    def __len__(self) -> int:
        return len(self._open)

    def held_by(self, client: str) -> int:
        """Streams ``client`` holds open now."""
        return self._per_client[client]

    async def watch(self) -> None:
        """Drop streams whose write has waited more than ``send_timeout``; runs forever.

        A dropped client loses its connection (its cursor and buffers are freed with it) and
        can resume with its last event id.
        """
        timeout = self.send_timeout
        if timeout is None:
            await anyio.sleep_forever()
            return
        # A stuck write is noticed between `timeout` and 1.25 x `timeout` after it started.
        interval = timeout / 4
        while True:
            await anyio.sleep(interval)
            deadline = time.monotonic() - timeout
            for slot in self._open:
                since = slot.sending_since
                if since and since < deadline and slot.task is not None and not slot.dropped:
                    slot.dropped = True
                    slot.task.cancel()


@dataclass(slots=True, frozen=True)
class ParamsProblem:
    """Why a params body was refused: where in it (``loc``), and what to do."""

    loc: tuple[str | int, ...]
    kind: str
    message: str


def check_params(
    value: Any, *, max_depth: int | None = None, max_string: int | None = None
) -> ParamsProblem | None:
    """The first place where ``value`` (parsed JSON) cannot be taken as a job's params: it
    nests deeper than ``max_depth``, has a string (or key) longer than ``max_string``, or
    holds what cannot travel as JSON (text with a lone surrogate, a number that is not
    finite, an integer too long to print). ``None`` skips a limit.

    It walks with an explicit stack, so it is as safe on hostile input as on honest input.
    """
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 0, ())]
    while stack:
        item, depth, loc = stack.pop()
        if isinstance(item, str):
            if max_string is not None and len(item) > max_string:
                return _too_long(loc, len(item), max_string)
        if not isinstance(item, dict | list):
            problem = travel_problem(item)
            if problem is not None:
                return ParamsProblem(loc, *problem)
            continue
        depth += 1
        if max_depth is not None and depth > max_depth:
            return _too_deep(loc, max_depth)
        if isinstance(item, dict):
            for key, child in item.items():
                if max_string is not None and len(key) > max_string:
                    return _too_long((*loc, key[:40]), len(key), max_string, what="key")
                if (problem := travel_problem(key)) is not None:
                    return ParamsProblem((*loc, safe_text(key[:40])), *problem)
                stack.append((child, depth, (*loc, key)))
        else:
            stack.extend((child, depth, (*loc, index)) for index, child in enumerate(item))
    return None


def too_deep(max_depth: int) -> ParamsProblem:
    """The problem for a body so deep that the JSON parser itself gave up."""
    return _too_deep((), max_depth)


def _too_deep(loc: tuple[str | int, ...], max_depth: int) -> ParamsProblem:
    return ParamsProblem(
        loc,
        "too_deep",
        f"params nest more than {max_depth} levels of lists and objects deep; flatten them "
        "(the server's limit is JOBCAST_MAX_PARAM_DEPTH)",
    )


def _too_long(
    loc: tuple[str | int, ...], length: int, max_string: int, *, what: str = "string"
) -> ParamsProblem:
    return ParamsProblem(
        loc,
        "string_too_long",
        f"this {what} is {length} characters long; params take at most {max_string} per "
        "string (the server's limit is JOBCAST_MAX_PARAM_STRING): pass a reference, such "
        "as a file name, instead of the data",
    )
