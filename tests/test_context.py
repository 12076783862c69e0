from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest

from jobcast import JobCancelled, JobContext


def make_context(
    loop: asyncio.AbstractEventLoop, batches: list[list[str]] | None = None
) -> JobContext:
    sink = [] if batches is None else batches
    return JobContext("job-1", "resize", {"folder": "in"}, loop=loop, on_lines=sink.append)


@pytest.fixture
def ctx() -> Iterator[JobContext]:
    """A context whose loop never runs: for what task code does without logging."""
    loop = asyncio.new_event_loop()
    try:
        yield make_context(loop)
    finally:
        loop.close()


# -- progress --------------------------------------------------------------------------------


def test_context_starts_with_no_progress(ctx: JobContext) -> None:
    assert (ctx.current, ctx.total, ctx.message) == (0, None, None)
    assert (ctx.job_id, ctx.task, ctx.params) == ("job-1", "resize", {"folder": "in"})


def test_progress_sets_current_total_and_message(ctx: JobContext) -> None:
    ctx.progress(3, 10, "img_003.png")

    assert (ctx.current, ctx.total, ctx.message) == (3, 10, "img_003.png")


def test_progress_keeps_total_and_message_when_not_given(ctx: JobContext) -> None:
    ctx.progress(3, 10, "img_003.png")
    ctx.progress(4)

    assert (ctx.current, ctx.total, ctx.message) == (4, 10, "img_003.png")


def test_advance_adds_to_current(ctx: JobContext) -> None:
    ctx.progress(3, 10)
    ctx.advance()
    ctx.advance(2.5)

    assert ctx.current == 6.5
    assert ctx.total == 10


def test_track_sets_total_from_len_and_counts_each_item_after_it_is_processed(
    ctx: JobContext,
) -> None:
    seen: list[tuple[str, float]] = []

    for item in ctx.track(["a", "b", "c"], description="resizing"):
        seen.append((item, ctx.current))
        assert ctx.total == 3

    assert seen == [("a", 0), ("b", 1), ("c", 2)]
    assert ctx.current == 3
    assert ctx.message == "resizing"


def test_track_adds_up_across_two_tracked_loops(ctx: JobContext) -> None:
    for _ in ctx.track([1, 2, 3]):
        pass
    totals = [ctx.total for _ in ctx.track([4, 5])]

    assert totals == [5, 5]
    assert (ctx.current, ctx.total) == (5, 5)


def test_track_with_an_explicit_total_of_the_iterable_counts_like_its_len(
    ctx: JobContext,
) -> None:
    first, second = [1, 2, 3], [4, 5]
    for _ in ctx.track(first):
        pass

    totals = [ctx.total for _ in ctx.track(iter(second), total=len(second))]

    assert totals == [5, 5]  # the same as ctx.track(second)
    assert (ctx.current, ctx.total) == (5, 5)


def test_track_of_a_generator_without_len_counts_with_no_total(ctx: JobContext) -> None:
    def numbers() -> Iterator[int]:
        yield from range(4)

    assert list(ctx.track(numbers())) == [0, 1, 2, 3]
    assert (ctx.current, ctx.total) == (4, None)


def test_track_raises_job_cancelled_when_cancelled_mid_iteration(ctx: JobContext) -> None:
    processed: list[int] = []

    with pytest.raises(JobCancelled) as caught:
        for item in ctx.track(range(10)):
            processed.append(item)
            if item == 2:
                ctx.cancel()

    assert processed == [0, 1, 2]
    assert ctx.current == 3
    assert caught.value.job_id == "job-1"


# -- cancellation ----------------------------------------------------------------------------


def test_cancelled_and_raise_if_cancelled(ctx: JobContext) -> None:
    assert not ctx.cancelled
    ctx.raise_if_cancelled()

    ctx.cancel()

    assert ctx.cancelled
    with pytest.raises(JobCancelled, match="'job-1' was cancelled"):
        ctx.raise_if_cancelled()


def test_sleep_returns_after_the_delay_when_not_cancelled(ctx: JobContext) -> None:
    start = time.monotonic()

    ctx.sleep(0.05)

    assert time.monotonic() - start >= 0.05


def test_sleep_raises_at_once_when_already_cancelled(ctx: JobContext) -> None:
    ctx.cancel()
    start = time.monotonic()

    with pytest.raises(JobCancelled):
        ctx.sleep(60)

    assert time.monotonic() - start < 5


def test_sleep_wakes_and_raises_promptly_when_cancelled_from_another_thread(
    ctx: JobContext,
) -> None:
    sleeping = threading.Event()
    outcome: list[BaseException | None] = []

    def task() -> None:
        sleeping.set()
        try:
            ctx.sleep(60)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=task, daemon=True)
    worker.start()
    assert sleeping.wait(5)
    start = time.monotonic()

    ctx.cancel()
    worker.join(5)

    assert not worker.is_alive()
    assert time.monotonic() - start < 5
    assert len(outcome) == 1 and isinstance(outcome[0], JobCancelled)


# -- logs ------------------------------------------------------------------------------------


async def collect(
    expected: int, log_lines: list[object], *, loop_busy: bool = False
) -> tuple[list[list[str]], set[int]]:
    """Log ``log_lines`` from a worker thread; return the batches and the threads they came on."""
    batches: list[list[str]] = []
    threads: set[int] = set()
    received = anyio.Event()
    count = 0

    def on_lines(lines: list[str]) -> None:
        nonlocal count
        batches.append(lines)
        threads.add(threading.get_ident())
        count += len(lines)
        if count >= expected:
            received.set()

    ctx = JobContext("job-1", "t", {}, loop=asyncio.get_running_loop(), on_lines=on_lines)

    def task() -> None:
        for line in log_lines:
            ctx.log(line)

    with anyio.fail_after(5):
        if loop_busy:  # the loop is busy elsewhere while the task logs its burst
            worker = threading.Thread(target=task)
            worker.start()
            worker.join(5)
        else:
            await anyio.to_thread.run_sync(task)
        await received.wait()
    return batches, threads


@pytest.mark.anyio
async def test_log_lines_from_a_worker_thread_arrive_on_the_loop_in_order() -> None:
    lines = [f"line {i}" for i in range(5000)]

    batches, threads = await collect(len(lines), list(lines))

    assert [line for batch in batches for line in batch] == lines
    assert threads == {threading.get_ident()}


@pytest.mark.anyio
async def test_log_splits_multi_line_strings_and_formats_objects() -> None:
    batches, _ = await collect(6, ["first\nsecond\r\nthird\rfourth\n", 42, "last"])

    assert [line for batch in batches for line in batch] == [
        "first",
        "second",
        "third",
        "fourth",
        "42",
        "last",
    ]


@pytest.mark.anyio
async def test_a_burst_of_log_lines_is_handed_over_in_few_batches() -> None:
    lines = [f"line {i}" for i in range(10_000)]

    batches, _ = await collect(len(lines), list(lines))

    assert [line for batch in batches for line in batch] == lines
    assert len(batches) <= len(lines) // 10


@pytest.mark.anyio
async def test_lines_logged_while_the_loop_is_busy_arrive_in_one_batch() -> None:
    lines = [f"line {i}" for i in range(1000)]

    batches, _ = await collect(len(lines), list(lines), loop_busy=True)

    assert batches == [lines]


def test_log_after_the_loop_closed_does_not_raise() -> None:
    loop = asyncio.new_event_loop()
    batches: list[list[str]] = []
    ctx = make_context(loop, batches)
    loop.close()

    ctx.log("the server has stopped")
    ctx.log("and the task goes on")

    assert batches == []
