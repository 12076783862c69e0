"""Command tasks: argv templates, progress parsing, and real child programs run as jobs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from jobcast import JobCancelled, JobContext, TaskError
from jobcast.commands import (
    ProgressReading,
    build_argv,
    check_template,
    parse_progress,
    placeholders,
    run_command,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.integration  # real programs and servers


def python(code: str, *args: str) -> list[str]:
    """The argv of a child Python program (always there, unlike most batch programs)."""
    return [sys.executable, "-c", textwrap.dedent(code), *args]


class Output:
    """A job context on the running loop, keeping the lines it logs; wait for one of them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._arrived = anyio.Event()
        self.ctx = JobContext(
            "job-1", "command", {}, loop=asyncio.get_running_loop(), on_lines=self._receive
        )

    def _receive(self, lines: list[str]) -> None:
        self.lines.extend(lines)
        self._arrived.set()

    async def wait_for(self, prefix: str, seconds: float = 10) -> str:
        """The first logged line that starts with ``prefix``, once it has arrived."""
        with anyio.fail_after(seconds):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                self._arrived = anyio.Event()
                await self._arrived.wait()

    async def pids(self) -> list[int]:
        """The pids a child printed as ``pids 12 34``."""
        return [int(pid) for pid in (await self.wait_for("pids ")).split()[1:]]


class Background:
    """``run_command`` in a task group: its result, its exception, or its cancellation."""

    def __init__(self) -> None:
        self.result: dict[str, int] | None = None
        self.error: Exception | None = None
        self.cancelled = False
        self.done = anyio.Event()

    async def run(self, argv: list[str], ctx: JobContext, **options: Any) -> None:
        try:
            self.result = await run_command(argv, ctx, **options)
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited: reaped, or a zombie waiting for a parent that is not us."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def assert_reaped(pid: int) -> None:
    """Our own child must be reaped, not a zombie: its pid no longer exists at all."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# A child that prints its pid and that of a grandchild, then waits; both ignore SIGTERM.
DEAF_FAMILY = """
    import os, signal, subprocess, sys, time
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", deaf])
    print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
    time.sleep(60)
"""


# -- argv templates --------------------------------------------------------------------------


def test_placeholders_are_the_names_in_braces_and_doubled_braces_are_literal() -> None:
    template = ["convert", "{src}", "-resize", "{size}x{size}", "--label={{src}}", "{dst}"]

    assert placeholders(template) == {"src", "size", "dst"}


def test_build_argv_puts_each_value_inside_its_own_item() -> None:
    template = ["convert", "{src}", "-resize", "{size}x{size}", "--out={dst}", "{{literal}}"]
    params = {"src": "my photo.png", "size": 64, "dst": "out dir/a.png"}

    argv = build_argv(template, params)

    assert argv == [
        "convert",
        "my photo.png",
        "-resize",
        "64x64",
        "--out=out dir/a.png",
        "{literal}",
    ]


def test_build_argv_writes_booleans_as_true_or_false_and_numbers_with_str() -> None:
    argv = build_argv(["tool", "--strip={strip}", "--keep={keep}", "{q}"], {
        "strip": True, "keep": False, "q": 0.5,
    })  # fmt: skip

    assert argv == ["tool", "--strip=true", "--keep=false", "0.5"]


def test_a_value_is_never_expanded_again() -> None:
    argv = build_argv(["tool", "{a}", "{b}"], {"a": "{b}", "b": "{a.__class__}"})

    assert argv == ["tool", "{b}", "{a.__class__}"]


@pytest.mark.anyio
async def test_shell_syntax_in_a_value_reaches_the_program_as_one_argument() -> None:
    out = Output()
    hostile = "a; rm -rf / && echo $HOME `id` | cat > x 'q' \"dq\"\nsecond line"
    template = python("import json, sys; print(json.dumps(sys.argv[1:]))")
    template += ["{name}", "--size={size}"]

    argv = build_argv(template, {"name": hostile, "size": "1 2"})
    with anyio.fail_after(10):
        await run_command(argv, out.ctx, kill_grace=1)
    received = json.loads(await out.wait_for("["))

    assert received == [hostile, "--size=1 2"]


def test_a_string_value_that_would_read_as_an_option_is_refused() -> None:
    with pytest.raises(ValueError, match=r"param 'src' is '--output=/etc/passwd'.*'--' item"):
        build_argv(["convert", "{src}", "out.png"], {"src": "--output=/etc/passwd"})


def test_a_dash_value_is_allowed_after_double_dash_inside_an_option_and_as_a_number() -> None:
    template = ["tool", "--name={name}", "-r", "{angle}", "--", "{src}"]

    argv = build_argv(template, {"name": "-x", "angle": -90, "src": "-file.png"})

    assert argv == ["tool", "--name=-x", "-r", "-90", "--", "-file.png"]


def test_a_placeholder_that_is_not_a_declared_param_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['dst'\] are not declared params"):
        check_template(["convert", "{src}", "{dst}"], ["src", "size"])


def test_a_placeholder_without_a_value_is_refused_when_building() -> None:
    with pytest.raises(ValueError, match=r"\['dst'\] are not declared params"):
        build_argv(["convert", "{src}", "{dst}"], {"src": "a.png"})


def test_a_placeholder_in_the_program_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot contain a placeholder"):
        check_template(["{tool}", "a.png"], ["tool"])


def test_a_shell_string_template_is_refused() -> None:
    with pytest.raises(ValueError, match="not a shell string"):
        check_template("convert {src} out.png", ["src"])


@pytest.mark.parametrize(
    "item", ["{}", "{0}", "{src.name}", "{src[0]}", "{src!r}", "{src:>5}", "{src", "src}"]
)
def test_placeholders_other_than_a_plain_name_are_refused(item: str) -> None:
    with pytest.raises(ValueError, match=r"argv item 1"):
        placeholders(["tool", item])


@pytest.mark.parametrize("value", [None, ["a", "b"], {"a": 1}, "nul\0byte"])
def test_values_that_argv_cannot_carry_are_refused_naming_the_param(value: object) -> None:
    with pytest.raises(ValueError, match="param 'src'"):
        build_argv(["tool", "{src}"], {"src": value})


# -- progress --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (" 45%|████▌     | 45/100 [00:01<00:01, 40.0it/s]", ProgressReading(45, 100)),
        (
            "Resizing:  20%|██        | 1/5 [00:00<00:00, 199.76it/s]",
            ProgressReading(1, 5, "Resizing"),
        ),
        ("  33%|███▍      | 1.00k/3.00k [00:00<00:00, 13.2MB/s]", ProgressReading(1000, 3000)),
        ("100%|##########| 7/7 [00:00<00:00, 9.1it/s]", ProgressReading(7, 7)),
        ("Reading: 3it [00:00, 54169.52it/s]", ProgressReading(3, None, "Reading")),
        ("45%", ProgressReading(45, 100, "45%")),
        ("Downloading 45.5 %", ProgressReading(45.5, 100, "Downloading 45.5 %")),
        ("  progress: 100%  ", ProgressReading(100, 100, "progress: 100%")),
        ("step 12/50", ProgressReading(12, 50, "step 12/50")),
        ("[12/50] img_012.png", ProgressReading(12, 50, "[12/50] img_012.png")),
        ("(0 / 8) starting", ProgressReading(0, 8, "(0 / 8) starting")),
    ],
)
def test_progress_is_read_from_tqdm_bars_percentages_and_counts(
    line: str, expected: ProgressReading
) -> None:
    assert parse_progress(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "copied 3 files to /a/b/2024/05",
        "released on 2024/05/06",
        "due 12/25/2024",
        "network 10.0.0.0/24",
        "GET /api/v1/items/3 HTTP/1.1 200",
        "see https://example.org/12/50",
        "ratio 17/5",
        "divide 1/0",
        "versions 3.11/3.12",
        "a 3/4-inch bolt",
        "sales up 150%",
        "cpu -5% +3%",
        "50%off",
        "printf('%d items')",
        "no numbers here at all",
    ],
)
def test_lines_that_only_look_like_progress_are_not_progress(line: str) -> None:
    assert parse_progress(line) is None


# -- running: success ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_program_logs_stdout_and_stderr_lines_and_reports_percent_progress() -> None:
    out = Output()
    script = """
        import sys
        print("starting")
        for percent in (10, 55.5):
            print(f"converting {percent}%", flush=True)
        print("a warning", file=sys.stderr)
        print("done")
    """

    with anyio.fail_after(10):
        result = await run_command(python(script), out.ctx, kill_grace=1, stderr_prefix="! ")
    await out.wait_for("done")
    await out.wait_for("! a warning")

    assert result == {"exit_code": 0}
    assert [line for line in out.lines if not line.startswith("!")] == [
        "starting",
        "converting 10%",
        "converting 55.5%",
        "done",
    ]
    ctx = out.ctx
    assert (ctx.current, ctx.total, ctx.message) == (55.5, 100, "converting 55.5%")


@pytest.mark.anyio
async def test_progress_is_read_from_n_of_total_lines() -> None:
    out = Output()
    script = """
        for n in range(1, 5):
            print(f"[{n}/4] resized img_{n}.png")
        print("copied 4 files to /out/2024/05")
    """

    with anyio.fail_after(10):
        await run_command(python(script), out.ctx, kill_grace=1)

    ctx = out.ctx
    assert (ctx.current, ctx.total, ctx.message) == (4, 4, "[4/4] resized img_4.png")


@pytest.mark.anyio
async def test_a_real_tqdm_bar_on_stderr_reports_progress_and_logs_one_line() -> None:
    out = Output()
    script = """
        import sys
        from tqdm import tqdm
        for _ in tqdm(range(50), desc="Resizing", mininterval=0, file=sys.stderr):
            pass
    """

    with anyio.fail_after(10):
        await run_command(python(script), out.ctx, kill_grace=1)
    final = await out.wait_for("Resizing: 100%")

    ctx = out.ctx
    assert (ctx.current, ctx.total, ctx.message) == (50, 50, "Resizing")
    # 51 redraws went by with \r; only the bar left on the line at its newline is logged.
    assert [line for line in out.lines if "Resizing" in line] == [final]
    assert "50/50" in final


@pytest.mark.anyio
async def test_carriage_returns_update_progress_and_crlf_ends_a_line() -> None:
    out = Output()
    script = r"""
        import sys
        sys.stdout.write("step 1/4\rstep 2/4\rstep 3/4\r\nwindows line\r\nno newline at the end")
    """

    with anyio.fail_after(10):
        await run_command(python(script), out.ctx, kill_grace=1)
    await out.wait_for("no newline")

    assert out.lines == ["step 3/4", "windows line", "no newline at the end"]
    assert (out.ctx.current, out.ctx.total) == (3, 4)


@pytest.mark.anyio
async def test_a_code_listed_in_success_codes_succeeds() -> None:
    out = Output()

    with anyio.fail_after(10):
        result = await run_command(
            python("raise SystemExit(1)"), out.ctx, kill_grace=1, success_codes={0, 1}
        )

    assert result == {"exit_code": 1}


@pytest.mark.anyio
async def test_env_and_cwd_are_the_programs(tmp_path: Path) -> None:
    out = Output()
    env: Mapping[str, str] = {**os.environ, "JOBCAST_TEST": "from env"}
    script = "import os; print(os.environ['JOBCAST_TEST'], os.getcwd())"

    with anyio.fail_after(10):
        await run_command(python(script), out.ctx, kill_grace=1, env=env, cwd=str(tmp_path))

    assert await out.wait_for("from env") == f"from env {tmp_path}"


# -- running: floods and long lines ----------------------------------------------------------


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.anyio
@pytest.mark.usefixtures("traced")
async def test_a_flood_of_lines_is_logged_whole_in_few_batches_in_bounded_memory() -> None:
    count = 200_000
    received = anyio.Event()
    batches: list[int] = []  # lines per batch: the test must not hold the lines themselves
    first_and_last: list[str] = []

    def on_lines(lines: list[str]) -> None:
        if not batches:
            first_and_last.append(lines[0])
        batches.append(len(lines))
        if sum(batches) >= count:
            first_and_last.append(lines[-1])
            received.set()

    ctx = JobContext("job-1", "flood", {}, loop=asyncio.get_running_loop(), on_lines=on_lines)
    script = f"import sys; sys.stdout.write(''.join(f'line {{i}}\\n' for i in range({count})))"
    output_size = sum(len(f"line {i}\n") for i in range(count))
    tracemalloc.reset_peak()

    with anyio.fail_after(30):
        await run_command(python(script), ctx, kill_grace=1)
        peak = tracemalloc.get_traced_memory()[1]
        await received.wait()

    assert sum(batches) == count
    assert first_and_last == ["line 0", f"line {count - 1}"]
    assert len(batches) <= count // 100  # handed over in batches, not line by line
    assert peak < output_size  # never held whole, let alone as 200,000 str objects


@pytest.mark.anyio
@pytest.mark.usefixtures("traced")
async def test_a_megabyte_line_without_newline_is_cut_not_held_whole() -> None:
    out = Output()
    size = 2**20
    script = f"import sys; sys.stdout.write('x' * {size}); sys.stdout.write('\\nafter')"
    tracemalloc.reset_peak()

    with anyio.fail_after(10):
        await run_command(python(script), out.ctx, kill_grace=1, max_line=4096)
        peak = tracemalloc.get_traced_memory()[1]
    await out.wait_for("after")

    cut, after = out.lines
    assert after == "after"
    assert len(cut) <= 4096
    assert cut.startswith("x" * 4000)
    assert cut.endswith(f"[… cut: {size:,} bytes in all]")
    assert peak < size


# -- running: failures -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_non_zero_exit_fails_with_the_last_stderr_lines() -> None:
    out = Output()
    script = """
        import sys
        for i in range(30):
            print(f"problem {i}", file=sys.stderr)
        sys.exit(3)
    """

    with anyio.fail_after(10), pytest.raises(TaskError) as caught:
        await run_command(python(script), out.ctx, kill_grace=1, stderr_tail=5)

    error = caught.value
    assert error.type_name == "CommandFailed"
    assert f"{sys.executable} exited with code 3" in error.message
    assert error.message.endswith("\n".join(f"problem {i}" for i in range(25, 30)))
    assert "problem 24" not in error.message


@pytest.mark.anyio
async def test_a_program_killed_by_a_signal_fails_naming_the_signal() -> None:
    out = Output()
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"

    with anyio.fail_after(10), pytest.raises(TaskError) as caught:
        await run_command(python(script), out.ctx, kill_grace=1)

    assert caught.value.type_name == "CommandFailed"
    assert "was killed by signal SIGKILL and wrote nothing to stderr" in caught.value.message


@pytest.mark.anyio
@pytest.mark.parametrize("program", ["/nonexistent/jobcast-no-such-tool", "jobcast-no-such-tool"])
async def test_a_missing_program_fails_naming_it(program: str) -> None:
    with pytest.raises(TaskError) as caught:
        await run_command([program, "a.png"], Output().ctx, kill_grace=1)

    assert caught.value.type_name == "CommandNotFound"
    assert f"program {program!r} was not found" in caught.value.message


@pytest.mark.anyio
async def test_a_program_that_is_not_executable_fails_naming_it(tmp_path: Path) -> None:
    script = tmp_path / "convert.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    with pytest.raises(TaskError) as caught:
        await run_command([str(script)], Output().ctx, kill_grace=1)

    assert caught.value.type_name == "CommandNotExecutable"
    assert f"program {str(script)!r} is not executable" in caught.value.message


@pytest.mark.anyio
async def test_a_missing_working_folder_fails_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")

    with pytest.raises(TaskError) as caught:
        await run_command(python("pass"), Output().ctx, kill_grace=1, cwd=missing)

    assert caught.value.type_name == "CommandNotStarted"
    assert repr(missing) in caught.value.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("argv", "options", "message"),
    [
        ([], {}, "argv must be a non-empty list"),
        ("ls -l", {}, "argv must be a non-empty list"),
        (["ls"], {"kill_grace": -1}, "kill_grace"),
        (["ls"], {"max_line": 10}, "max_line"),
        (["ls"], {"stderr_tail": -1}, "stderr_tail"),
    ],
)
async def test_run_command_checks_its_arguments(
    argv: list[str], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await run_command(argv, Output().ctx, **{"kill_grace": 1, **options})


# -- running: cancel and timeouts --------------------------------------------------------------


@pytest.mark.anyio
async def test_a_job_cancelled_before_it_starts_runs_nothing(tmp_path: Path) -> None:
    out = Output()
    marker = tmp_path / "ran"
    out.ctx.cancel()

    with pytest.raises(JobCancelled):
        await run_command(python(f"open({str(marker)!r}, 'w')"), out.ctx, kill_grace=1)

    assert not marker.exists()


@pytest.mark.anyio
async def test_cancel_sends_sigterm_and_a_cooperative_program_stops() -> None:
    out = Output()
    script = """
        import os, signal, sys, time
        def stop(signum, frame):
            print("stopping on SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print(f"pids {os.getpid()}", flush=True)
        time.sleep(60)
    """
    run = Background()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: run.run(python(script), out.ctx, kill_grace=60))
            [pid] = await out.pids()
            out.ctx.cancel()
        await out.wait_for("stopping on SIGTERM")  # it stopped itself, long before SIGKILL

    assert isinstance(run.error, JobCancelled)
    assert_reaped(pid)


@pytest.mark.anyio
async def test_cancel_kills_a_program_that_ignores_sigterm_after_the_grace_period() -> None:
    out = Output()
    run = Background()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: run.run(python(DEAF_FAMILY), out.ctx, kill_grace=0.3))
            pid, grandchild = await out.pids()
            cancelled_at = time.monotonic()
            out.ctx.cancel()
            await run.done.wait()
            waited = time.monotonic() - cancelled_at

    assert isinstance(run.error, JobCancelled)
    assert waited >= 0.3  # SIGTERM alone did not end it; SIGKILL came after the grace period
    assert_reaped(pid)
    wait_until(lambda: gone(grandchild))  # the whole group got the signal


@pytest.mark.anyio
async def test_cancelling_the_awaiting_task_kills_and_reaps_the_program_and_its_group() -> None:
    out = Output()
    run = Background()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: run.run(python(DEAF_FAMILY), out.ctx, kill_grace=60))
            pid, grandchild = await out.pids()
            group.cancel_scope.cancel()

    assert run.cancelled
    assert_reaped(pid)  # reaped before the cancellation went on: no zombie
    wait_until(lambda: gone(grandchild))  # and no orphan


@pytest.mark.anyio
async def test_a_timeout_kills_and_reaps_the_program() -> None:
    out = Output()
    run = Background()

    with anyio.fail_after(10):
        with anyio.move_on_after(60) as timeout:  # how the runner applies a task's timeout
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: run.run(python(DEAF_FAMILY), out.ctx, kill_grace=60))
                pid, grandchild = await out.pids()
                timeout.deadline = anyio.current_time()  # the timeout runs out now

    assert timeout.cancelled_caught and run.cancelled
    assert_reaped(pid)
    wait_until(lambda: gone(grandchild))


@pytest.mark.anyio
async def test_what_a_finished_program_left_running_in_its_group_is_killed() -> None:
    out = Output()
    script = """
        import os, subprocess, sys
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(f"pids {child.pid}", flush=True)
    """

    with anyio.fail_after(10):
        result = await run_command(python(script), out.ctx, kill_grace=1)
        [leftover] = await out.pids()

    assert result == {"exit_code": 0}
    wait_until(lambda: gone(leftover))
