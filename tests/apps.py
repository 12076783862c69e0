"""Tasks the tests drive, and the app factory they are served from."""

from __future__ import annotations

import os
import sys
import threading
from typing import Annotated, Any

from pydantic import Field

from jobcast import JobCast, JobContext

# The suite writes no database into the checkout: apps that name no store (the demo's, a
# bare JobCast(), the servers tests spawn) keep nothing unless a test sets JOBCAST_DB or
# passes db= or store=. setdefault, so that a server spawned with JOBCAST_DB keeps its file.
# It must come before jobcast.demo is imported (in make_jobs): the demo builds its app, and
# so reads its settings, at import.
os.environ.setdefault("JOBCAST_DB", ":memory:")

#: Gates that ``hold`` jobs wait on, by name: a test opens one to let its job finish.
GATES: dict[str, threading.Event] = {}


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


def make_jobs(**options: Any) -> JobCast:
    """A JobCast with quick timings, the test tasks, and ``options`` on top."""
    from jobcast.demo import sleep, ticker

    options.setdefault("progress_interval", 0.02)
    options.setdefault("grace_period", 1.0)
    jobs = JobCast(**options)
    jobs.task(sleep)
    jobs.task(ticker)
    jobs.task(mode="process")(crunch)
    jobs.task(mode="process")(deaf)
    jobs.task(mode="process")(suicide)
    jobs.task(bars)
    jobs.task(name="deaf_with_timeout", mode="process", timeout=0.5)(deaf)
    jobs.command(
        "batch",
        [
            sys.executable,
            "-m",
            "jobcast.demo_batch",
            "--items",
            "{items}",
            "--delay",
            "0",
            "--fail-at",
            "{fail_at}",
        ],
        params={"items": (int, 10), "fail_at": (int, 0)},
    )
    jobs.command("hang", [sys.executable, "-c", "import time; time.sleep(600)"], timeout=0.3)
    jobs.command(
        "exit_3",
        [sys.executable, "-c", "import sys; print('giving up'); sys.exit(3)"],
        retries=1,
        retry_delay=0.05,
    )
    jobs.command("wait", [sys.executable, "-c", "import time; print('waiting'); time.sleep(600)"])
    jobs.task(name="bars_in_process", mode="process")(bars)

    @jobs.task
    def hold(ctx: JobContext, name: str, steps: int = 0) -> dict[str, Any]:
        """Report `steps` steps of progress, then wait until the test opens gate `name`."""
        for _ in ctx.track(range(steps)):
            pass
        ctx.log(f"holding on {name}")
        released = gate(name)
        while not released.wait(0.01):
            ctx.raise_if_cancelled()
        return {"gate": name}

    @jobs.task
    def count(ctx: JobContext, n: Annotated[int, Field(ge=0, le=10_000_000)] = 1000) -> int:
        """Advance progress `n` times as fast as possible."""
        ctx.progress(0, n, "counting")
        for _ in range(n):
            ctx.advance()
        return n

    @jobs.task
    def shout(ctx: JobContext, lines: Annotated[int, Field(ge=0, le=100_000)] = 3) -> None:
        """Log `lines` lines in one burst."""
        for i in range(lines):
            ctx.log(f"line {i}")

    @jobs.task
    def flood(
        ctx: JobContext,
        lines: Annotated[int, Field(ge=0, le=100_000)] = 1000,
        width: Annotated[int, Field(ge=1, le=4000)] = 100,
    ) -> None:
        """Log `lines` lines of `width` characters in one burst."""
        body = "x" * width
        for i in range(lines):
            ctx.log(f"{i:06d} {body}")

    @jobs.task
    def echo(ctx: JobContext, text: str, steps: Annotated[int, Field(ge=0, le=100)] = 2) -> str:
        """Log `text`, report `steps` steps with it as the message, and return it."""
        ctx.log(text)
        for step in range(steps):
            ctx.progress(step + 1, steps, text)
        return text

    @jobs.task
    def boom(ctx: JobContext, message: str = "kaput") -> None:
        """Raise ValueError(message)."""
        raise ValueError(message)

    @jobs.task
    def unserialisable(ctx: JobContext) -> object:
        """Return something JSON cannot carry."""
        return {"when": threading.Event()}

    @jobs.task
    def stubborn(ctx: JobContext, seconds: float = 300) -> None:
        """Ignore cancellation: block the thread for `seconds`."""
        threading.Event().wait(seconds)

    @jobs.task(retry_on_restart=True)
    def resumable(ctx: JobContext, name: str) -> str:
        """Like hold, but queued again to run from the start when the server restarts."""
        ctx.log(f"holding on {name}")
        released = gate(name)
        while not released.wait(0.01):
            ctx.raise_if_cancelled()
        return name

    @jobs.task(max_concurrency=1)
    def single(ctx: JobContext, name: str) -> str:
        """Like hold, but at most one at a time."""
        released = gate(name)
        while not released.wait(0.01):
            ctx.raise_if_cancelled()
        return name

    @jobs.task(duplicates="reject")
    def unique(ctx: JobContext, name: str) -> str:
        """Like hold, but refuses a second job with the same name while one is active."""
        return str(hold(ctx, name)["gate"])

    @jobs.task(duplicates="join")
    def shared(ctx: JobContext, name: str) -> str:
        """Like hold, but a second start with the same name joins the active job."""
        return str(hold(ctx, name)["gate"])

    @jobs.task(timeout=0.2)
    def slow(ctx: JobContext) -> None:
        """Outlast its 0.2 s timeout, cooperatively."""
        ctx.sleep(60)

    @jobs.task(retries=3, retry_delay=0.2, backoff=2, retry_on=ValueError)
    def flaky(ctx: JobContext, name: str, failures: int = 2, error: str = "ValueError") -> int:
        """Raise `error` (ValueError or KeyError) the first `failures` times it runs for
        `name`, then return how many attempts it took."""
        attempts = FLAKY[name] = FLAKY.get(name, 0) + 1
        ctx.log(f"attempt {attempts}")
        if attempts <= failures:
            raise {"ValueError": ValueError, "KeyError": KeyError}[error](f"failure {attempts}")
        return attempts

    @jobs.task(retries=2, retry_delay=0.05)
    def deaf_then_fail(ctx: JobContext, name: str) -> None:
        """Wait for gate `name`, deaf to a cancel, then raise ValueError."""
        released = gate(name)
        while not released.wait(0.01):
            pass
        raise ValueError("failed after the cancel")

    @jobs.task
    def escape(ctx: JobContext, how: str = "exit") -> None:
        """Raise what no task should: SystemExit (`exit`), or StopIteration (`stop`)."""
        if how == "exit":
            raise SystemExit(3)
        raise StopIteration("nothing left")

    @jobs.task(timeout=0.2, retries=1, retry_delay=0.05)
    def slow_twice(ctx: JobContext) -> None:
        """Outlast its 0.2 s timeout, each of its two attempts."""
        ctx.sleep(60)

    return jobs


#: How many times ``flaky`` ran, by name.
FLAKY: dict[str, int] = {}


def crunch(ctx: JobContext, seconds: float = 0.2, fail: bool = False) -> int:
    """Burn CPU for `seconds`, reporting progress; module-level so a worker can import it."""
    import time

    ctx.log(f"nice {__import__('os').nice(0)}")
    end = time.monotonic() + seconds
    loops = 0
    while time.monotonic() < end:
        sum(i * i for i in range(2000))
        loops += 1
        ctx.progress(loops, None, "crunching")
        ctx.raise_if_cancelled()
    if fail:
        raise KeyError("no such thing")
    return loops


def deaf(ctx: JobContext) -> None:
    """Ignore SIGTERM-driven cancel entirely: spin until killed."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.log("spinning")
    while True:
        time.sleep(0.01)


def suicide(ctx: JobContext) -> None:
    """Die by SIGKILL in the middle of the job."""
    import os
    import signal

    ctx.progress(1, 2, "about to die")
    os.kill(os.getpid(), signal.SIGKILL)


def bars(ctx: JobContext, n: int = 50, hold: str = "") -> int:
    """Use plain tqdm, unaware of jobcast: an outer bar and short inner ones."""
    import io

    from tqdm import tqdm

    done = 0
    for _ in tqdm(range(n), desc="outer", file=io.StringIO()):
        for _ in tqdm(range(3), desc="inner", file=io.StringIO(), leave=False):
            done += 1
    if hold:
        released = gate(hold)
        while not released.wait(0.01):
            ctx.raise_if_cancelled()
    return done


#: What ``jobcast serve tests.apps:served`` runs in the tests that need a real process.
served = make_jobs()


def await_file(ctx: JobContext, path: str) -> str:
    """Wait until a file exists at `path`: a gate a test opens across processes (a Redis
    worker runs its jobs in another process, where GATES cannot reach)."""
    ctx.log(f"waiting for {path}")
    while not os.path.exists(path):
        ctx.sleep(0.01)
    return path


served.task(await_file)
served.task(name="await_file_again", retry_on_restart=True)(await_file)


def fail_once(ctx: JobContext, path: str) -> str:
    """Fail the first time (leaving a file at `path`), succeed once the file is there: a
    retry that must outlive the process it was decided in."""
    if not os.path.exists(path):
        open(path, "w").close()
        raise ConnectionError("the first attempt fails")
    return path


served.task(retries=1, retry_delay=3)(fail_once)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def spin(ctx: JobContext) -> None:
    """Log this worker process's pid, then burn CPU, never looking at cancel."""
    ctx.log(f"pid {os.getpid()}")
    while True:
        sum(range(1000))


def exclusive(ctx: JobContext, path: str) -> None:
    """Write this run's pid to `path`, and "overlap" first when a run written there before
    still runs; then log the pid and spin."""
    with open(path, "a+") as runs:
        runs.seek(0)
        if any(alive(int(pid)) for pid in runs.read().split() if pid.isdigit()):
            runs.write("overlap\n")
        runs.write(f"{os.getpid()}\n")
    spin(ctx)


served.task(mode="process")(spin)
served.task(mode="process", retry_on_restart=True)(exclusive)
served.command("family", ["sh", "-c", "sleep 600 & echo child $!; echo self $$; wait"])


#: A deployment with a schedule of its own (``jobcast serve tests.apps:scheduled``).
scheduled = make_jobs()
scheduled.schedule("pulse", "count", every=0.5, params={"n": 1})
scheduled.task(retries=1, retry_delay=0.2)(fail_once)
