from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from jobcast import TERMINAL_STATES, Job, JobState, Progress
from jobcast.jobs import JobError, ProgressMeter

# -- Progress --------------------------------------------------------------------------------


def test_percent_is_current_over_total() -> None:
    assert Progress(30, 120).percent == 25.0
    assert Progress(1, 3).percent == 33.33


@pytest.mark.parametrize("total", [None, 0])
def test_percent_and_eta_are_none_when_total_is_unknown(total: float | None) -> None:
    progress = Progress(30, total, rate=12.5)

    assert progress.percent is None
    assert progress.eta_s is None


def test_percent_is_capped_at_100_when_current_overshoots_total() -> None:
    progress = Progress(150, 100, rate=10.0)

    assert progress.percent == 100.0
    assert progress.eta_s == 0.0


def test_eta_is_what_is_left_at_the_current_rate() -> None:
    assert Progress(30, 120, rate=12.5).eta_s == 7.2


@pytest.mark.parametrize("rate", [None, 0.0])
def test_eta_is_none_without_a_rate(rate: float | None) -> None:
    assert Progress(30, 120, rate=rate).eta_s is None


def test_progress_dict_has_the_contract_fields() -> None:
    progress = Progress(30, 120, "img_030.png", rate=12.34567, elapsed_s=2.4001)

    assert progress.to_dict() == {
        "current": 30,
        "total": 120,
        "percent": 25.0,
        "message": "img_030.png",
        "rate": 12.346,
        "elapsed_s": 2.4,
        "eta_s": 7.29,
    }


# -- ProgressMeter ---------------------------------------------------------------------------


def feed(meter: ProgressMeter, start: float, speed: float, seconds: int) -> list[Progress]:
    """Read the meter once a second for ``seconds`` seconds at ``speed`` items per second."""
    readings = []
    for second in range(1, seconds + 1):
        readings.append(meter.read(start + speed * second, None, None, now=float(second)))
    return readings


def test_meter_has_no_rate_before_anything_is_done() -> None:
    meter = ProgressMeter(started=100.0)

    assert meter.read(0, 10, None, now=100.0).rate is None
    assert meter.read(0, 10, None, now=101.0).eta_s is None


def test_meter_rate_of_a_steady_speed_is_that_speed() -> None:
    meter = ProgressMeter(started=0.0)

    readings = feed(meter, 0, 10, 20)

    for reading in readings:
        assert reading.rate == pytest.approx(10.0)
    assert readings[-1].elapsed_s == 20.0
    assert readings[-1].current == 200


def test_meter_reading_carries_total_and_message() -> None:
    meter = ProgressMeter(started=0.0)

    reading = meter.read(30, 120, "img_030.png", now=3.0)

    assert (reading.current, reading.total, reading.message) == (30, 120, "img_030.png")
    assert reading.percent == 25.0
    assert reading.eta_s == 9.0


def test_meter_rate_moves_smoothly_toward_a_new_speed() -> None:
    meter = ProgressMeter(started=0.0)
    feed(meter, 0, 10, 20)

    rates = []
    for second in range(21, 61):
        reading = meter.read(200 + 30 * (second - 20), None, None, now=float(second))
        assert reading.rate is not None
        rates.append(reading.rate)

    assert 10.0 < rates[0] < 25.0  # moved toward 30, but did not jump there
    assert rates == sorted(rates)
    assert rates[-1] == pytest.approx(30.0, abs=0.1)


def test_meter_without_smoothing_follows_the_latest_speed() -> None:
    meter = ProgressMeter(started=0.0, smoothing=1.0)
    feed(meter, 0, 10, 20)

    assert meter.read(230, None, None, now=21.0).rate == pytest.approx(30.0)


def test_meter_with_zero_smoothing_gives_the_overall_average() -> None:
    meter = ProgressMeter(started=0.0, smoothing=0.0)
    feed(meter, 0, 10, 10)  # 100 items in 10 s

    reading = meter.read(400, None, None, now=20.0)  # then 300 items in 10 s

    assert reading.rate == pytest.approx(20.0)


@pytest.mark.parametrize("smoothing", [0.3, 1.0, 0.0])
def test_meter_restarts_measuring_when_the_count_goes_backwards(smoothing: float) -> None:
    meter = ProgressMeter(started=0.0, smoothing=smoothing)
    feed(meter, 0, 10, 10)  # 10 items/s up to 100 items at t=10
    meter.read(0, None, None, now=10.0)  # the task starts counting again

    readings = [meter.read(2 * s, None, None, now=10.0 + s) for s in range(1, 11)]

    for reading in readings:  # the old 10 items/s is forgotten: the new speed is 2 items/s
        assert reading.rate == pytest.approx(2.0)


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, math.nan])
def test_meter_refuses_smoothing_outside_0_to_1(smoothing: float) -> None:
    with pytest.raises(ValueError, match="smoothing"):
        ProgressMeter(started=0.0, smoothing=smoothing)


# -- Job -------------------------------------------------------------------------------------

CREATED = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_snapshot_of_a_running_job() -> None:
    created = CREATED.timestamp()
    job = Job(
        task="resize",
        params={"folder": "in"},
        state=JobState.RUNNING,
        progress=Progress(30, 120, "img_030.png", rate=12.5, elapsed_s=2.4),
        created_at=created,
        started_at=created + 1.5,
    )

    snapshot = job.snapshot()

    assert snapshot == {
        "id": job.id,
        "task": "resize",
        "params": {"folder": "in"},
        "state": "running",
        "progress": {
            "current": 30,
            "total": 120,
            "percent": 25.0,
            "message": "img_030.png",
            "rate": 12.5,
            "elapsed_s": 2.4,
            "eta_s": 7.2,
        },
        "created_at": "2024-05-01T12:00:00+00:00",
        "started_at": "2024-05-01T12:00:01.500000+00:00",
        "finished_at": None,
        "result": None,
        "error": None,
        "attempt": 1,
        "max_attempts": 1,
        "run_at": None,
        "priority": 0,
        "schedule": None,
        "cancelling": False,
    }
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_a_job_read_back_from_its_snapshot_keeps_its_queue_fields() -> None:
    created = CREATED.timestamp()
    job = Job(
        task="t",
        params={},
        created_at=created,
        attempt=2,
        max_attempts=4,
        run_at=created + 30,
        priority=-5,
        schedule="nightly",
        cancelling=True,
    )

    again = Job.from_snapshot(job.snapshot())

    assert again.snapshot() == job.snapshot()
    assert again.order == job.order


def test_a_snapshot_stored_before_the_queue_fields_reads_with_their_defaults() -> None:
    snapshot = Job(task="t", params={}, created_at=CREATED.timestamp()).snapshot()
    for key in ("attempt", "max_attempts", "run_at", "priority", "schedule", "cancelling"):
        del snapshot[key]

    job = Job.from_snapshot(snapshot)

    assert (job.attempt, job.max_attempts, job.run_at, job.priority) == (1, 1, None, 0)
    assert (job.schedule, job.cancelling) == (None, False)


def test_the_queue_order_is_priority_first_then_age() -> None:
    created = CREATED.timestamp()
    old_low = Job(task="t", params={}, created_at=created, priority=0)
    new_low = Job(task="t", params={}, created_at=created + 1, priority=0)
    new_high = Job(task="t", params={}, created_at=created + 2, priority=3)
    negative = Job(task="t", params={}, created_at=created - 5, priority=-1)
    top = Job(task="t", params={}, created_at=created + 9, priority=1_000_000)

    ordered = sorted([negative, new_low, top, old_low, new_high], key=lambda job: job.order)

    assert ordered == [top, new_high, old_low, new_low, negative]


def test_snapshot_times_are_iso_8601_in_utc() -> None:
    created = CREATED.timestamp()
    job = Job(task="t", params={}, created_at=created, started_at=created, finished_at=created)

    snapshot = job.snapshot()

    for key in ("created_at", "started_at", "finished_at"):
        parsed = datetime.fromisoformat(snapshot[key])
        assert parsed == CREATED
        assert parsed.utcoffset() == timedelta(0)


def test_snapshot_of_a_failed_job_has_the_error_type_and_message() -> None:
    job = Job(task="crunch", params={"rows": 3}, state=JobState.FAILED)
    job.error = JobError.from_exception(ZeroDivisionError("division by zero"))

    snapshot = job.snapshot()

    assert snapshot["state"] == "failed"
    assert snapshot["error"] == {"type": "ZeroDivisionError", "message": "division by zero"}
    assert snapshot["progress"] is None


def test_snapshot_carries_the_result() -> None:
    job = Job(task="resize", params={}, state=JobState.SUCCEEDED, result={"count": 3})

    assert job.snapshot()["result"] == {"count": 3}


def test_every_job_gets_its_own_id() -> None:
    ids = {Job(task="resize", params={}).id for _ in range(100)}

    assert len(ids) == 100


def test_a_new_job_is_queued() -> None:
    job = Job(task="resize", params={})

    assert job.state is JobState.QUEUED
    assert not job.finished


def test_terminal_states() -> None:
    assert TERMINAL_STATES == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.INTERRUPTED,
    }
    assert JobState.QUEUED not in TERMINAL_STATES
    assert JobState.RUNNING not in TERMINAL_STATES


@pytest.mark.parametrize("state", list(JobState))
def test_a_job_is_finished_exactly_in_a_terminal_state(state: JobState) -> None:
    job = Job(task="resize", params={}, state=state)

    assert job.finished is (state in TERMINAL_STATES)


def test_states_are_their_wire_names() -> None:
    assert [state.value for state in JobState] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "interrupted",
    ]
    assert JobState("cancelled") is JobState.CANCELLED


def test_a_job_read_back_from_its_snapshot_shows_the_same_snapshot() -> None:
    job = Job(
        task="crunch",
        params={"n": 3, "label": "é"},
        state=JobState.FAILED,
        progress=Progress(3, 10, "step", 1.5, 2.25),
        created_at=1795607798.123456,
        started_at=1795607799.5,
        finished_at=1795607801.000001,
        error=JobError("ValueError", "bad"),
    )
    again = Job.from_snapshot(job.snapshot())
    assert again.snapshot() == job.snapshot()
    assert again.id == job.id and again.state is JobState.FAILED
