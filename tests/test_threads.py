from __future__ import annotations

import logging
import threading

import anyio
import anyio.to_thread
import pytest

from jobcast._threads import run_in_daemon_thread


@pytest.mark.anyio
async def test_returns_the_value_of_the_function() -> None:
    with anyio.fail_after(5):
        assert await run_in_daemon_thread(lambda: 6 * 7, name="job-answer") == 42


@pytest.mark.anyio
async def test_raises_the_exception_of_the_function() -> None:
    error = ZeroDivisionError("division by zero")

    def fail() -> None:
        raise error

    with anyio.fail_after(5), pytest.raises(ZeroDivisionError) as caught:
        await run_in_daemon_thread(fail, name="job-fail")

    assert caught.value is error


@pytest.mark.anyio
async def test_runs_in_a_named_daemon_thread_off_the_loop() -> None:
    def where() -> tuple[str, bool, int]:
        thread = threading.current_thread()
        return thread.name, thread.daemon, threading.get_ident()

    with anyio.fail_after(5):
        name, daemon, ident = await run_in_daemon_thread(where, name="job-where")

    assert (name, daemon) == ("job-where", True)
    assert ident != threading.get_ident()


@pytest.mark.anyio
async def test_cancelling_the_awaiting_task_abandons_the_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = threading.Event()
    release = threading.Event()
    threads: list[threading.Thread] = []
    finished = False

    def stubborn() -> str:
        threads.append(threading.current_thread())
        started.set()
        release.wait(30)  # ignores cancellation, like a task that never checks ctx.cancelled
        return "too late"

    async def run() -> None:
        nonlocal finished
        await run_in_daemon_thread(stubborn, name="job-stubborn")
        finished = True

    caplog.set_level(logging.DEBUG, logger="jobcast")
    try:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                assert await anyio.to_thread.run_sync(started.wait, 5)
                tg.cancel_scope.cancel()

        assert not finished
        assert threads[0].is_alive()  # the cancel did not wait for the thread
    finally:
        release.set()
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join, 5)

    assert not threads[0].is_alive()
    # the thread's late result was dropped and reported, not raised anywhere
    assert "thread job-stubborn finished after it was abandoned" in caplog.messages
