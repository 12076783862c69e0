from __future__ import annotations

import json
import math
import time
from typing import Any

import anyio
import pytest

from jobcast.eventlog import EventLog, Gap
from jobcast.events import Event


def add(log: EventLog, name: str = "progress", **payload: Any) -> Event:
    return log.append(name, job_id="job-1", task="resize", payload=payload)


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


def parse_frame(frame: bytes) -> tuple[str, str, dict[str, Any]]:
    """Split one SSE frame into its id, event name and JSON data; fail on anything else."""
    text = frame.decode()
    assert text.endswith("\n\n")
    lines = text[:-2].split("\n")
    assert len(lines) == 3, lines
    id_line, event_line, data_line = lines
    assert id_line.startswith("id: ")
    assert event_line.startswith("event: ")
    assert data_line.startswith("data: ")
    data: dict[str, Any] = json.loads(data_line.removeprefix("data: "))
    return id_line.removeprefix("id: "), event_line.removeprefix("event: "), data


# -- sequence numbers and reads --------------------------------------------------------------


def test_sequence_numbers_start_at_1_and_increase_by_one() -> None:
    log = EventLog()

    events = [add(log) for _ in range(5)]

    assert seqs(events) == [1, 2, 3, 4, 5]
    assert log.last_seq == 5
    assert log.first_seq == 1


def test_sequence_numbers_start_at_next_seq() -> None:
    log = EventLog(next_seq=500)

    assert log.last_seq == 499
    assert log.read(499, 10) == []
    assert seqs([add(log), add(log)]) == [500, 501]
    assert seqs(log.read(499, 10)) == [500, 501]


def test_empty_log_reads_nothing_from_the_start() -> None:
    log = EventLog()

    assert log.read(0, 10) == []


def test_read_returns_the_events_after_a_position_in_order() -> None:
    log = EventLog()
    for _ in range(10):
        add(log)

    assert seqs(log.read(0, 100)) == list(range(1, 11))
    assert seqs(log.read(6, 100)) == [7, 8, 9, 10]
    assert log.read(10, 100) == []


def test_read_is_capped_at_limit() -> None:
    log = EventLog()
    for _ in range(10):
        add(log)

    assert seqs(log.read(2, 3)) == [3, 4, 5]
    assert log.read(2, 0) == []


def test_read_of_a_position_newer_than_the_log_is_a_gap() -> None:
    log = EventLog()
    for _ in range(3):
        add(log)

    with pytest.raises(Gap) as caught:
        log.read(4, 10)

    assert caught.value.position == 4
    assert caught.value.first_seq == 1


def test_read_of_a_position_before_the_start_of_a_restarted_log_is_a_gap() -> None:
    log = EventLog(next_seq=100)
    add(log)

    with pytest.raises(Gap):
        log.read(5, 10)


def test_memory_stays_bounded_and_the_oldest_events_go() -> None:
    maxlen = 100
    log = EventLog(maxlen=maxlen)

    for _ in range(100 * maxlen):
        add(log)

    retained = log.iter_after(0)
    assert maxlen <= len(retained) <= 2 * maxlen
    assert retained[-1].seq == log.last_seq == 100 * maxlen
    assert log.first_seq == retained[0].seq > 100 * maxlen - 2 * maxlen
    # the newest maxlen events are always there
    assert seqs(log.read(log.last_seq - maxlen, maxlen)) == list(
        range(log.last_seq - maxlen + 1, log.last_seq + 1)
    )


def test_read_of_a_position_older_than_retained_is_a_gap() -> None:
    log = EventLog(maxlen=10)
    for _ in range(1000):
        add(log)

    with pytest.raises(Gap, match="gone") as caught:
        log.read(0, 10)

    assert caught.value.position == 0
    assert caught.value.first_seq == log.first_seq > 1
    # the position just before the oldest retained event is still readable
    assert log.read(log.first_seq - 1, 1)[0].seq == log.first_seq


def test_extend_takes_recovered_events_with_their_numbers() -> None:
    old = EventLog()
    recovered = [add(old) for _ in range(5)][2:]  # seq 3, 4, 5
    log = EventLog()

    log.extend(recovered)

    assert seqs(log.read(2, 10)) == [3, 4, 5]
    assert log.read(2, 10)[0].frame is recovered[0].frame
    assert (log.first_seq, log.last_seq) == (3, 5)
    with pytest.raises(Gap):
        log.read(1, 10)
    assert add(log).seq == 6


def test_extend_keeps_only_what_is_contiguous_with_the_end() -> None:
    old = EventLog()
    events = [add(old) for _ in range(6)]
    log = EventLog()

    log.extend([events[0], events[1], events[4], events[5]])  # 1, 2, then a hole, 5, 6

    assert log.first_seq == 5
    assert seqs(log.read(4, 10)) == [5, 6]
    with pytest.raises(Gap):
        log.read(2, 10)


def test_extend_refuses_events_older_than_the_end() -> None:
    log = EventLog()
    first = add(log)

    with pytest.raises(ValueError, match="not after"):
        log.extend([first])


def test_append_after_close_raises() -> None:
    log = EventLog()
    log.close()

    assert log.closed
    with pytest.raises(RuntimeError, match="closed"):
        add(log)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"maxlen": 0}, "maxlen"), ({"next_seq": 0}, "next_seq"), ({"next_seq": -5}, "next_seq")],
)
def test_constructor_names_the_bad_parameter(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        EventLog(maxlen=kwargs.get("maxlen", 10), next_seq=kwargs.get("next_seq", 1))


# -- frames ----------------------------------------------------------------------------------


def test_frame_is_one_sse_event_with_id_name_and_one_line_of_json() -> None:
    log = EventLog()
    before = time.time()

    event = log.append("log", job_id="job-1", task="resize", payload={"line": "a\nb\r\nc"})

    event_id, name, data = parse_frame(event.frame)
    assert event_id == "1"
    assert name == "log"
    assert data["seq"] == 1
    assert before - 1 <= data["ts"] <= time.time() + 1
    assert data["line"] == "a\nb\r\nc"
    assert event.frame.count(b"\n") == 4  # three lines and the blank line that ends the event


def test_frame_keeps_non_ascii_text() -> None:
    log = EventLog()

    event = log.append("log", job_id="job-1", task="resize", payload={"line": "画像を処理中 ✓"})

    assert "画像を処理中 ✓" in event.frame.decode()
    assert parse_frame(event.frame)[2]["line"] == "画像を処理中 ✓"


def test_frame_ids_follow_the_sequence() -> None:
    log = EventLog(next_seq=41)

    events = [add(log, "queued"), add(log, "running"), add(log, "succeeded")]

    frames = [parse_frame(event.frame) for event in events]
    assert [(f[0], f[1], f[2]["seq"]) for f in frames] == [
        ("41", "queued", 41),
        ("42", "running", 42),
        ("43", "succeeded", 43),
    ]


def test_a_frame_is_encoded_once_and_read_as_the_same_bytes() -> None:
    log = EventLog()
    event = add(log, current=1)

    first, second = log.read(0, 1)[0], log.read(0, 1)[0]

    assert first.frame is event.frame
    assert second.frame is event.frame


def test_a_payload_json_cannot_carry_is_sent_cleaned_and_the_fault_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = EventLog()

    event = add(log, rate=math.nan, when=object(), text="caf\udce9")

    data = json.loads(event.frame.split(b"data: ", 1)[1])
    assert data["rate"] is None and data["when"].startswith("<object object")
    assert data["text"] == "caf\ufffd"
    assert "could not encode" in caplog.text
    assert add(log).seq == event.seq + 1


@pytest.mark.parametrize(
    ("name", "terminal"),
    [
        ("succeeded", True),
        ("failed", True),
        ("cancelled", True),
        ("interrupted", True),
        ("queued", False),
        ("running", False),
        ("progress", False),
        ("log", False),
    ],
)
def test_terminal_events(name: str, terminal: bool) -> None:
    assert add(EventLog(), name).terminal is terminal


# -- waiting ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wait_returns_at_once_when_there_is_something_new() -> None:
    log = EventLog()
    add(log)

    with anyio.fail_after(5):
        await log.wait(0)


async def wake_after(log: EventLog, action: str) -> list[int]:
    """Park two cursors at the end of the log, do ``action``, return where both woke."""
    woke: list[int] = []
    position = log.last_seq

    async def cursor() -> None:
        await log.wait(position)
        woke.append(log.last_seq)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cursor)
            tg.start_soon(cursor)
            await anyio.wait_all_tasks_blocked()
            assert woke == []  # parked: nothing new yet
            if action == "append":
                add(log)
            elif action == "poke":
                log.poke()
            else:
                log.close()
    return woke


@pytest.mark.anyio
async def test_wait_wakes_every_cursor_on_append() -> None:
    log = EventLog()
    add(log)

    assert await wake_after(log, "append") == [2, 2]


@pytest.mark.anyio
async def test_wait_wakes_on_poke_with_nothing_new() -> None:
    log = EventLog()
    add(log)

    assert await wake_after(log, "poke") == [1, 1]


@pytest.mark.anyio
async def test_wait_wakes_on_close_and_returns_at_once_after() -> None:
    log = EventLog()
    add(log)

    assert await wake_after(log, "close") == [1, 1]
    with anyio.fail_after(5):
        await log.wait(log.last_seq)


@pytest.mark.anyio
async def test_wait_keeps_working_after_many_wake_ups() -> None:
    log = EventLog()

    for _ in range(3):
        await wake_after(log, "append")
        await wake_after(log, "poke")

    assert log.last_seq == 3


@pytest.mark.anyio
async def test_a_holding_log_shows_events_only_once_stored() -> None:
    log = EventLog(maxlen=100, next_seq=1, hold_until_stored=True)
    first = add(log)
    second = add(log)
    assert log.last_seq == 2 and log.visible_seq == 0
    assert log.read(0, 10) == []
    with anyio.move_on_after(0.05) as waited:
        await log.wait(0)
    assert waited.cancelled_caught  # nothing to show yet: the cursor stays parked
    log.stored(first.seq)
    assert log.read(0, 10) == [first]
    with anyio.fail_after(1):
        await log.wait(0)
    log.stored(99)  # never past what was appended
    assert log.visible_seq == second.seq
    assert log.read(first.seq, 10) == [second]


def test_a_restarted_log_shows_a_gap_to_every_old_position_and_goes_on_from_its_new_start() -> None:
    log = EventLog(maxlen=10)
    for _ in range(3):
        log.append("log", job_id="a", task="t", payload={})
    log.restart(1000)
    assert (log.first_seq, log.last_seq) == (1000, 999)
    for position in (0, 2, 3):
        with pytest.raises(Gap):
            log.read(position, 10)
    assert log.append("log", job_id="a", task="t", payload={}).seq == 1000
    assert [event.seq for event in log.read(999, 10)] == [1000]
    with pytest.raises(ValueError, match="next_seq must be after 1000"):
        log.restart(1000)
