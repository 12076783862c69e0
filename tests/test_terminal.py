"""``jobcast start|watch|jobs|cancel``: what they print and their exit status, on a pipe
and on a terminal, against real servers."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobcast._terminal import parse_params
from jobcast.client import Client, Job
from tests.apps import gate
from tests.conftest import Process, free_port

Serve = Callable[..., Any]
TOKEN = "s3cret-token-for-the-tests"


def jobcast(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobcast ARGS`` against ``url`` until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "jobcast", *args],
        env={**os.environ, "JOBCAST_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def launch(url: str, *args: str, **options: Any) -> subprocess.Popen[bytes]:
    """Start ``jobcast ARGS`` against ``url``, its output on pipes unless told otherwise."""
    options.setdefault("stdout", subprocess.PIPE)
    options.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "jobcast", *args],
        env={**os.environ, "JOBCAST_URL": url},
        **options,
    )


def read_until(fd: int, text: bytes, seconds: float = 20) -> bytes:
    """What ``fd`` gives until ``text`` has come; fails after ``seconds`` or at its end."""
    out = _read(fd, seconds, until=text)
    if text not in out:
        raise AssertionError(f"the output ended before {text!r}: {out!r}")
    return out


def read_to_end(fd: int, seconds: float = 30) -> bytes:
    """What ``fd`` gives until its other side has closed; fails after ``seconds``."""
    return _read(fd, seconds, until=None)


def _read(fd: int, seconds: float, *, until: bytes | None) -> bytes:
    """What ``fd`` gives until ``until`` has come (never, if None) or its end."""
    out = b""
    deadline = time.monotonic() + seconds
    while until is None or until not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            wanted = "the output to end" if until is None else repr(until)
            raise AssertionError(f"{wanted} did not come within {seconds} s: {out!r}")
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a terminal whose other side has closed
                chunk = b""
            if not chunk:
                return out
            out += chunk
    return out


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    """Its exit status and the rest of its output."""
    out, err = process.communicate(timeout=30)
    return process.returncode, out.decode(), err.decode()


# -- params ------------------------------------------------------------------------------------


def test_values_are_json_when_they_are_json_else_text() -> None:
    pairs = ["a=in", "n=5", "f=0.5", "b=true", "l=[1, 2]", 's="5"', "x=NaN", "e=", "k=a=b"]
    pairs += ["big=1e999", "bigs=[1, -1e999]"]
    assert parse_params(pairs) == {
        "a": "in",
        "n": 5,
        "f": 0.5,
        "b": True,
        "l": [1, 2],
        "s": "5",
        "x": "NaN",  # not JSON: what JSON cannot carry stays text
        "e": "",
        "k": "a=b",
        "big": "1e999",  # JSON's syntax, but infinite: no number JSON can carry
        "bigs": "[1, -1e999]",
    }


# -- the outcomes ------------------------------------------------------------------------------


def test_start_follow_prints_the_log_then_the_result_as_json_and_exits_0(serve: Serve) -> None:
    _, server = serve()
    done = jobcast(server.url, "start", "sleep", "seconds=0.2", "steps=2", "--follow")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"slept_s": 0.2, "steps": 2}
    lines = done.stderr.splitlines()
    assert "step 1/2 done" in lines and "step 2/2 done" in lines
    assert lines.index("step 1/2 done") < lines.index("step 2/2 done")
    assert re.search(r"^job \w+ succeeded$", done.stderr, re.MULTILINE)


def test_a_failed_job_says_its_error_on_stderr_and_exits_1(serve: Serve) -> None:
    _, server = serve()
    done = jobcast(server.url, "start", "boom", "message=no disk", "--follow")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1].endswith("(boom) failed: ValueError: no disk")


def watch_held(client: Client, name: str) -> tuple[Job, subprocess.Popen[bytes]]:
    """A ``hold`` job on gate ``name``, and ``jobcast watch`` once it shows the job running."""
    job = client.start("hold", {"name": name})
    watching = launch(client.base_url, "watch", job.id)
    assert watching.stderr is not None
    read_until(watching.stderr.fileno(), f"holding on {name}".encode())
    return job, watching


def test_a_job_cancelled_while_watched_exits_3(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        job, watching = watch_held(client, "watched")
        client.cancel(job.id)
        status, out, err = finish(watching)
    assert status == 3 and out == ""
    assert err.splitlines()[-1] == f"jobcast: job {job.id} (hold) was cancelled"


def test_a_job_interrupted_by_a_restart_exits_3_and_the_watch_survives_the_restart(
    spawn: Callable[..., Process], tmp_path: Path
) -> None:
    env = {"JOBCAST_DB": str(tmp_path / "jobs.db"), "JOBCAST_RETRY_MS": "100"}
    server = spawn(**env)
    with Client(server.url) as client:
        job = client.start("await_file", {"path": str(tmp_path / "never")})
    watching = launch(server.url, "watch", job.id)
    assert watching.stderr is not None
    read_until(watching.stderr.fileno(), b"waiting for")
    server.popen.kill()
    server.popen.wait(10)
    spawn(port=server.port, **env)
    status, out, err = finish(watching)
    assert status == 3 and out == ""
    assert err.splitlines()[-1] == f"jobcast: job {job.id} (await_file) was interrupted"


def test_start_without_follow_prints_the_id_and_exits_0(serve: Serve) -> None:
    _, server = serve()
    done = jobcast(server.url, "start", "count", "n=3")
    assert done.returncode == 0
    job_id = done.stdout.strip()
    assert f"jobcast watch {job_id}" in done.stderr
    with Client(server.url) as client:
        assert client.wait(job_id, timeout=10).result == 3
    watched = jobcast(server.url, "watch", job_id)  # a finished job: its history, its result
    assert (watched.returncode, watched.stdout) == (0, "3\n")


def test_jobs_lists_newest_first_and_cancel_stops_a_job(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        first = client.start("count", {"n": 2})
        client.wait(first.id, timeout=10)
        held = client.start("hold", {"name": "listed"})
        listed = jobcast(server.url, "jobs")
        assert listed.returncode == 0
        rows = [line.split() for line in listed.stdout.splitlines()]
        assert [row[:3] for row in rows] == [
            [held.id, "hold", client.get(held.id).state],
            [first.id, "count", "succeeded"],
        ]
        assert "2/2 100%" in listed.stdout.splitlines()[1]
        only = jobcast(server.url, "jobs", "--task", "count")
        assert [line.split()[0] for line in only.stdout.splitlines()] == [first.id]

        cancelled = jobcast(server.url, "cancel", held.id)
        assert cancelled.returncode == 0
        assert cancelled.stdout.split()[0] == held.id
        assert client.wait(held.id, timeout=10).state == "cancelled"
        again = jobcast(server.url, "cancel", held.id)
        assert again.returncode == 1
        assert "already finished as 'cancelled'; there is nothing to cancel" in again.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["start", "count", "n"], "'n' is not key=value"),
        (["start", "count", "n=1", "n=2"], "'n' is given twice"),
        (["start", "nope"], "no task named 'nope'; choose one of:"),
        (["start", "count", "n=-1"], "n: Input should be greater than or equal to 0"),
        (["start", "count", "--delay", "soon"], "argument --delay: invalid float value"),
        (["start"], "the following arguments are required: task"),
        (["watch", "no-such-job"], "no job with id 'no-such-job'"),
        (["watch", ".."], "no job with id '..'"),
        (["watch", ""], "job_id must not be empty"),
        (["jobs", "--token", "two words"], "the token is not one a jobcast server could have"),
        (["cancel", "no-such-job"], "no job with id 'no-such-job'"),
        (["jobs", "--url", "localhost:8000"], "--url 'localhost:8000' is not an http://"),
        (["start", "echo", "text=" + os.fsdecode(b"in\xff")], "b'text=in\\xff' is not UTF-8 text"),
        (["start", "count", "n=1e999"], "n: Value error, must be a number, not str '1e999'"),
    ],
)
def test_usage_errors_exit_2_say_what_is_wrong_and_change_nothing(
    serve: Serve, args: list[str], says: str
) -> None:
    _, server = serve()
    done = jobcast(server.url, *args)
    assert done.returncode == 2
    assert says in done.stderr and done.stdout == ""
    with Client(server.url) as client:
        assert client.jobs() == []


def test_output_into_a_pipe_nobody_reads_ends_quietly(serve: Serve) -> None:
    _, server = serve()
    with Client(server.url) as client:
        client.wait(client.start("count", {"n": 1}).id, timeout=10)
    read, write = os.pipe()
    os.close(read)  # as `jobcast jobs | head -1` once head has had its line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "jobcast", "jobs", "--url", server.url],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


@pytest.mark.integration  # jobcast, as a process
def test_a_server_that_is_not_there_is_a_usage_error_saying_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = jobcast(url, "start", "count", "n=1")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"jobcast: cannot reach the jobcast server at {url} ([Errno 111] Connection refused); "
        "start it (jobcast serve) or point the client at it (JOBCAST_URL, --url)"
    )


def test_the_token_comes_from_the_option_or_the_environment(serve: Serve) -> None:
    _, server = serve(token=TOKEN)
    missing = jobcast(server.url, "start", "count", "n=1")
    assert missing.returncode == 2
    assert "the server needs a token: pass --token or set JOBCAST_TOKEN" in missing.stderr
    wrong = jobcast(server.url, "start", "count", "n=1", "--token", "x" * 20)
    assert wrong.returncode == 2
    assert "the server refused the token; check --token or JOBCAST_TOKEN" in wrong.stderr
    right = jobcast(server.url, "start", "count", "n=1", "--follow", JOBCAST_TOKEN=TOKEN)
    assert (right.returncode, right.stdout) == (0, "1\n")
    with Client(server.url) as client:
        assert len(client.jobs()) == 1  # the refused ones made nothing


# -- on a terminal -----------------------------------------------------------------------------


def test_on_a_terminal_a_live_bar_is_drawn_with_the_log_above_it(serve: Serve) -> None:
    _, server = serve()
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        running = launch(
            server.url,
            *("start", "sleep", "seconds=1", "steps=5", "--follow"),
            stdin=side,
            stdout=side,
            stderr=side,
        )
        os.close(side)
        shown = read_until(main, b'{"slept_s": 1.0, "steps": 5}').decode()
        assert running.wait(30) == 0
    finally:
        os.close(main)
    # Each log line clears the bar's line, is printed, and the bar is drawn again below it.
    bar = r"\r\x1b\[2Ksleep running \|[█░#-]{20}\| (\d)/5 \d+%"
    assert re.search(r"\r\x1b\[2Kstep 3/5 done\r\n" + bar, shown)
    # n/total, rate and ETA, redrawn in place as the job goes.
    readings = re.findall(bar + r" [\d.]+/s ETA 0:0\d sleeping", shown)
    assert len(set(readings)) >= 2
    assert shown.count("\r\n") < shown.count("\x1b[2K")  # redrawn, not scrolled


#: Text a job may log, report or return that a terminal would obey: clear the screen, set
#: the window's title, colour (as CSI and as its one-byte C1 form), ring the bell.
HOSTILE = "\x1b[2J\x1b]0;pwned\x07red\x1b[31m \x9b1m\x07bell\ttab\nnext"


_CLEAR = "\r\x1b[2K"


def on_a_terminal(
    url: str, *args: str, columns: int = 120, term: str = "xterm"
) -> tuple[int, str, str]:
    """Run ``jobcast ARGS`` with stderr on a terminal ``columns`` wide (of kind ``term``)
    and stdout on a pipe: its exit status, what the terminal showed and what stdout got."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    try:
        running = subprocess.Popen(
            [sys.executable, "-m", "jobcast", *args],
            env={**env, "JOBCAST_URL": url, "TERM": term},
            stdin=side,
            stdout=subprocess.PIPE,
            stderr=side,
        )
        os.close(side)
        shown = read_to_end(main)
        out, _ = running.communicate(timeout=30)
    finally:
        os.close(main)
    return running.returncode, shown.decode(), out.decode()


def columns_of(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def test_what_a_job_says_is_shown_and_never_obeyed_by_the_terminal(serve: Serve) -> None:
    _, server = serve()
    # Without a terminal: the log line and the error as plain text, the result as JSON.
    done = jobcast(server.url, "start", "echo", f"text={HOSTILE}", "--follow")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == HOSTILE  # the result itself, whole
    assert "red \ufffdbell tab" in done.stderr.splitlines()  # a line break makes two
    failed = jobcast(server.url, "start", "boom", f"message={HOSTILE}", "--follow")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].endswith("failed: ValueError: red \ufffdbell tab next")
    for output in (done.stdout, done.stderr, failed.stderr):
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", output), output
    # On a terminal: the bar shows the message on its one line, and the only escape is the
    # bar's own, which clears its line to redraw it.
    for args in (["echo", f"text={HOSTILE}"], ["boom", f"message={HOSTILE}"]):
        _, shown, _ = on_a_terminal(server.url, "start", *args, "--follow")
        assert "red \ufffdbell tab" in shown
        obeyed = re.search("[\x00-\x09\x0b-\x0c\x0e-\x1f\x7f-\x9f]", shown.replace(_CLEAR, ""))
        assert obeyed is None, shown


def test_a_terminal_that_cannot_redraw_a_line_gets_plain_lines(serve: Serve) -> None:
    _, server = serve()
    args = ("start", "sleep", "seconds=0.3", "steps=3", "--follow")
    status, shown, out = on_a_terminal(server.url, *args, term="dumb")
    assert status == 0 and json.loads(out) == {"slept_s": 0.3, "steps": 3}
    assert "\x1b" not in shown and "\r\n" in shown
    assert "step 3/3 done" in shown


def test_the_bar_fits_the_terminal_it_is_drawn_on_wide_characters_and_all(serve: Serve) -> None:
    _, server = serve()
    message = "画像を縮小しています " * 6  # each of these characters takes two columns
    status, shown, out = on_a_terminal(
        server.url, "start", "echo", f"text={message}", "steps=3", "--follow", columns=100
    )
    assert status == 0 and json.loads(out) == message  # stdout a pipe, stderr the terminal
    drawn = [part.rstrip("\r\n") for part in shown.split(_CLEAR)]
    bar = next(part for part in drawn if part.startswith("echo succeeded |"))
    assert "3/3 100%" in bar and "画像を" in bar
    # A line as wide as the terminal or wider would wrap, and the next redraw would clear
    # only its last row: the bar would scroll up the screen instead of staying in place.
    assert 98 <= columns_of(bar) <= 99


def test_ctrl_c_stops_watching_says_how_to_cancel_and_leaves_the_job_running(
    serve: Serve,
) -> None:
    _, server = serve()
    with Client(server.url) as client:
        job, watching = watch_held(client, "interrupted")
        watching.send_signal(signal.SIGINT)
        status, out, err = finish(watching)
        assert status == 3 and out == ""
        assert err.splitlines()[-1] == (
            f"jobcast: stopped watching; job {job.id} goes on. Cancel it with: "
            f"jobcast cancel {job.id}"
        )
        assert client.get(job.id).state == "running"
        gate("interrupted").set()
        assert client.wait(job.id, timeout=10).state == "succeeded"


def test_the_client_commands_load_none_of_the_server(serve: Serve) -> None:
    _, server = serve()
    code = (
        "import sys\n"
        "from jobcast.cli import main\n"
        "try:\n"
        "    main(['jobs', '--url', sys.argv[1]])\n"
        "finally:\n"
        "    print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, server.url], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stderr.split()
    assert not [name for name in loaded if name.split(".")[0] in ("fastapi", "uvicorn")]
    assert "jobcast.app" not in loaded and "jobcast.client" in loaded
