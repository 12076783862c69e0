"""A subscriber process for one fan-out run: ``python -m bench.subscribers CONFIG_JSON``.

The runner starts one or more of these so that reading thousands of streams can use a core
of its own. Conversation, one JSON line each way:

1. it opens ``n`` streams, then prints ``{"ready": ...}`` (or ``{"error": ...}``);
2. the runner triggers the publisher and sends ``{"t0": ..., "rate": ..., "deadline": ...}``,
   where ``t0`` is the monotonic time just before the trigger;
3. it waits until every stream has ``expect`` events or the deadline passes, then prints the
   result: deliveries, complete streams, and a histogram of lateness. Event k (from 0) was due
   at ``t0 + k / rate``; its lateness is its arrival minus that. With ``check_ids``, it also
   counts the ids each stream skipped or saw twice, and the ``reset`` frames.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

from .client import CountingStream, SequencedStream, StreamError, Tally, connect, stream_request
from .stats import Histogram

__all__ = ["WorkerConfig", "main"]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    host: str
    port: int
    path: str
    n: int
    event: str
    expect: int
    ready_on_frame: bool
    concurrency: int = 500
    connect_timeout: float = 60.0
    check_ids: bool = False  # count skipped and repeated ids (SequencedStream)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _open_all(config: WorkerConfig, tally: Tally) -> list[CountingStream]:
    request = stream_request(config.host, config.port, config.path, None)
    gate = asyncio.Semaphore(config.concurrency)
    kind = SequencedStream if config.check_ids else CountingStream

    async def open_one() -> CountingStream:
        async with gate:
            stream = kind(
                request,
                tally,
                event=config.event,
                expect=config.expect,
                ready_on_frame=config.ready_on_frame,
            )
            return await connect(config.host, config.port, stream, seconds=config.connect_timeout)

    return list(await asyncio.gather(*(open_one() for _ in range(config.n))))


def _result(
    streams: list[CountingStream], config: WorkerConfig, t0: float, rate: float
) -> dict[str, Any]:
    histogram = Histogram()
    last = t0
    for stream in streams:
        for at, first, count in stream.batches:
            last = max(last, at)
            base = (at - t0) * 1000.0
            for k in range(first, min(first + count, config.expect)):
                histogram.add_ms(base - k * 1000.0 / rate)
    result: dict[str, Any] = {
        "subscribers": len(streams),
        "complete": sum(1 for stream in streams if stream.matched >= config.expect),
        "deliveries": sum(min(stream.matched, config.expect) for stream in streams),
        "extra": sum(max(0, stream.matched - config.expect) for stream in streams),
        "lateness": histogram.to_json(),
        "last_arrival_s": last - t0,
    }
    checked = [stream for stream in streams if isinstance(stream, SequencedStream)]
    if checked:
        result["lost"] = sum(stream.lost for stream in checked)
        result["duplicated"] = sum(stream.duplicated for stream in checked)
        result["resets"] = sum(stream.resets for stream in checked)
    return result


async def run(config: WorkerConfig) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally(config.n)
    started = time.monotonic()
    try:
        streams = await _open_all(config, tally)
        async with asyncio.timeout(config.connect_timeout):
            await tally.all_ready
    except (StreamError, TimeoutError) as exc:
        _say({"error": f"{type(exc).__name__}: {exc}"})
        return
    _say({"ready": True, "connect_s": time.monotonic() - started})
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if not line:
        return  # the runner is gone
    go = json.loads(line)
    cpu_before = _cpu_seconds()
    with_deadline = max(0.0, go["deadline"] - time.monotonic())
    try:
        async with asyncio.timeout(with_deadline):
            await tally.all_complete
        timed_out = False
    except TimeoutError:
        timed_out = True
    wall = time.monotonic() - go["t0"]
    cpu = _cpu_seconds() - cpu_before
    for stream in streams:
        stream.abort()
    result = _result(streams, config, go["t0"], go["rate"])
    result.update(timed_out=timed_out, client_cpu_s=cpu, wall_s=wall)
    _say(result)


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    config = WorkerConfig(**json.loads(sys.argv[1]))
    try:
        import uvloop
    except ImportError:  # uvicorn[standard] brings it; without it the client is just slower
        asyncio.run(run(config))
    else:
        uvloop.run(run(config))


if __name__ == "__main__":
    main()
