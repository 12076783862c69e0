"""``jobcast serve``: its target, and what it says about settings and hosts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from jobcast.cli import load_app
from tests.conftest import Process, free_port


def test_a_jobcast_target_is_turned_into_its_app() -> None:
    assert isinstance(load_app("tests.apps:served"), FastAPI)


def test_an_app_target_is_served_as_it_is() -> None:
    from jobcast.demo import app

    assert load_app("jobcast.demo:app") is app


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("tests.apps", "is not module:attr"),
        ("no_such_module_here:jobs", "cannot import 'no_such_module_here'"),
        ("tests.apps:nothing", "has no attribute 'nothing'"),
    ],
)
def test_bad_targets_exit_with_a_message_saying_what_is_wrong(target: str, says: str) -> None:
    with pytest.raises(SystemExit) as exited:
        load_app(target)
    assert says in str(exited.value)


def serve_once(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``jobcast serve`` that is expected to exit at once."""
    return subprocess.run(
        [sys.executable, "-m", "jobcast", "serve", *args, "--port", str(free_port())],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.integration  # jobcast serve, as a process
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("JOBCAST_TOKEN", "abc", "at least 16 characters"),
        ("JOBCAST_MAX_WORKERS", "lots", "JOBCAST_MAX_WORKERS='lots' is not a valid int"),
        ("JOBCAST_PROGRESS_INTERVAL", "nan", "must be positive and finite"),
        ("JOBCAST_CORS_ORIGINS", "example.com", "is not an origin"),
    ],
)
def test_a_bad_setting_is_one_line_on_stderr_and_exit_status_2(
    variable: str, value: str, says: str
) -> None:
    exited = serve_once(**{variable: value})
    assert exited.returncode == 2
    assert exited.stderr.count("\n") == 1 and "Traceback" not in exited.stderr
    assert exited.stderr.startswith("jobcast: ") and says in exited.stderr


def test_a_variable_that_is_no_setting_is_named_with_the_closest_one(
    spawn: Callable[..., Process],
) -> None:
    server = spawn(JOBCAST_MAX_WORKER="2", JOBCAST_NOT_A_THING="x")
    output = server.output()
    assert (
        "JOBCAST_MAX_WORKER is not a jobcast setting and is ignored; did you mean "
        "JOBCAST_MAX_WORKERS?" in output
    )
    assert "JOBCAST_NOT_A_THING is not a jobcast setting" in output


@pytest.mark.integration  # jobcast serve, as a process
def test_serving_on_every_address_says_which_hosts_are_allowed_and_how_to_add_one() -> None:
    port = free_port()
    command = [sys.executable, "-m", "jobcast", "serve", "--host", "0.0.0.0", "--port", str(port)]
    env = {**os.environ, "JOBCAST_ALLOWED_HOSTS": "jobs.example.com"}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
    finally:
        server.kill()
        server.wait(10)
        if server.stderr is not None:
            server.stderr.close()
    assert "listening on 0.0.0.0" in line
    assert "localhost, IP addresses, jobs.example.com" in line
    assert "JOBCAST_ALLOWED_HOSTS=" in line
