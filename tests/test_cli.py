"""``jobcast serve``'s target loading."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from jobcast.cli import load_app


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
