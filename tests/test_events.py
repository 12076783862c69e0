from __future__ import annotations

import json

import pytest

from jobcast.events import Event, encode_json


@pytest.mark.parametrize(
    "payload",
    [
        {"job": {"id": "a", "state": "running", "params": {"text": 'héllo\n"quoted"'}}},
        {"job_id": "a", "line": "✓ done"},
        {},
    ],
)
def test_an_event_from_its_json_payload_is_the_event_create_makes(
    payload: dict[str, object],
) -> None:
    made = Event.create(
        1795607795952449, 1795607798.4426131, "log", job_id="a", task="t", payload=payload
    )
    spliced = Event.from_json(
        1795607795952449,
        1795607798.4426131,
        "log",
        job_id="a",
        task="t",
        payload=encode_json(payload),
    )
    assert spliced == made
    data = json.loads(spliced.frame.decode().split("data: ", 1)[1])
    assert data == {"seq": 1795607795952449, "ts": 1795607798.442613, **payload}


def test_a_payload_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        Event.from_json(1, 0.0, "log", job_id="a", task="t", payload="[1, 2]")
