from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from jobcast import Settings, SettingsError
from jobcast.exceptions import BackendUnavailable
from jobcast.settings import without_password


def test_defaults() -> None:
    settings = Settings()

    assert dataclasses.asdict(settings) == {
        "max_workers": 4,
        "max_queue": 1000,
        "max_jobs": 10_000,
        "progress_interval": 0.1,
        "keepalive_interval": 15.0,
        "retry_ms": 2000,
        "grace_period": 5.0,
        "kill_grace": 3.0,
        "event_buffer": 10_000,
        "max_body_bytes": 1 << 20,
        "max_log_line": 4096,
        "max_log_lines": 10_000,
        "max_result_bytes": 1 << 20,
        "snapshot_jobs": 500,
        "db": "jobcast.db",
        "retain_events": 100_000,
        "retain_days": 7.0,
        "token": (),
        "protect_reads": False,
        "cors_origins": (),
        "allowed_hosts": (),
        "max_param_depth": 32,
        "max_param_string": 10_000,
        "jobs_per_minute": 120,
        "max_streams_per_client": 100,
        "max_streams": 10_000,
        "stream_send_timeout": 30.0,
        "redis_url": None,
        "redis_prefix": "jobcast",
        "heartbeat_timeout": 10.0,
    }


def test_from_env_without_variables_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_from_env_ignores_variables_of_other_programs() -> None:
    assert Settings.from_env({"MAX_WORKERS": "9", "JOBCASTMAX_WORKERS": "9"}) == Settings()


def test_keyword_overrides_win_over_the_environment() -> None:
    environ = {"JOBCAST_MAX_WORKERS": "8", "JOBCAST_GRACE_PERIOD": "30"}

    settings = Settings.from_env(environ, max_workers=2)

    assert settings.max_workers == 2
    assert settings.grace_period == 30.0


def test_environment_values_are_converted_to_the_field_type() -> None:
    environ = {
        "JOBCAST_MAX_WORKERS": "8",
        "JOBCAST_PROGRESS_INTERVAL": "0.5",
        "JOBCAST_RETRY_MS": " 500 ",
    }

    settings = Settings.from_env(environ)

    assert settings.max_workers == 8 and type(settings.max_workers) is int
    assert settings.retry_ms == 500 and type(settings.retry_ms) is int
    assert settings.progress_interval == 0.5 and type(settings.progress_interval) is float


def test_a_whole_number_for_a_float_field_is_a_float() -> None:
    settings = Settings.from_env({"JOBCAST_KEEPALIVE_INTERVAL": "2"})

    assert settings.keepalive_interval == 2.0 and type(settings.keepalive_interval) is float


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JOBCAST_MAX_WORKERS", "lots"),
        ("JOBCAST_MAX_WORKERS", "1.5"),
        ("JOBCAST_MAX_WORKERS", ""),
        ("JOBCAST_GRACE_PERIOD", "5s"),
    ],
)
def test_an_invalid_environment_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{variable}={value!r} is not a valid"):
        Settings.from_env({variable: value})


def test_nan_from_the_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="(?i)progress_interval"):
        Settings.from_env({"JOBCAST_PROGRESS_INTERVAL": "nan"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_workers", 0), ("max_queue", -1), ("progress_interval", 0.0), ("grace_period", -5.0)],
)
def test_a_value_that_is_not_positive_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{field} must be positive"):
        Settings(**{field: value})


def test_a_value_that_is_not_positive_from_the_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="max_queue must be positive"):
        Settings.from_env({"JOBCAST_MAX_QUEUE": "0"})


def test_an_unknown_override_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="unknown settings: max_wrokers"):
        Settings.from_env({}, max_wrokers=2)


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_workers = 8  # type: ignore[misc]


def test_redis_url_must_be_a_redis_url() -> None:
    assert Settings.from_env({"JOBCAST_REDIS_URL": "redis://localhost:6379/0"}).redis_url == (
        "redis://localhost:6379/0"
    )
    assert Settings.from_env({"JOBCAST_REDIS_URL": ""}).redis_url is None
    with pytest.raises(ValueError, match="must be a Redis URL"):
        Settings(redis_url="localhost:6379")
    with pytest.raises(ValueError, match="redis_prefix must not be empty"):
        Settings(redis_prefix="")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret-pass@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://app:p@ss@cache:6380/1", "rediss://app:***@cache:6380/1"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_a_redis_password_is_never_shown(url: str, shown: str) -> None:
    assert without_password(url) == shown
    assert "s3cret" not in repr(Settings(redis_url=url))
    assert shown in repr(Settings(redis_url=url))
    error = BackendUnavailable(url, "connection refused")
    assert shown in str(error) and error.url == shown


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"max_workers": 2.5}, "max_workers must be a whole number, got 2.5"),
        ({"max_workers": True}, "max_workers must be a whole number, got True"),
        ({"grace_period": "5"}, "grace_period must be a number, got '5'"),
        ({"stream_send_timeout": "30"}, "stream_send_timeout must be a number"),
        ({"protect_reads": 1}, "protect_reads must be True or False"),
        ({"redis_url": "http://x"}, "redis_url must be a Redis URL"),
        ({"redis_url": "redis://u:secret@host"}, None),
    ],
)
def test_settings_are_checked_by_their_type(options: dict[str, object], says: str | None) -> None:
    if says is None:
        assert Settings(**options).redis_url == options["redis_url"]  # type: ignore[arg-type]
        return
    with pytest.raises(SettingsError, match=re.escape(says)):
        Settings(**options)  # type: ignore[arg-type]
