"""Events and their one encoding: every event is turned into SSE bytes exactly once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .jobs import TERMINAL_STATES

__all__ = ["Event", "encode_frame", "encode_json"]

_TERMINAL_NAMES = frozenset(state.value for state in TERMINAL_STATES)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def encode_json(data: dict[str, Any]) -> str:
    """JSON as every event is encoded: compact, UTF-8 kept, no NaN."""
    return _dumps(data)


def encode_frame(name: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    """One SSE frame: ``id:`` (when ``seq`` is given), ``event:`` and one ``data:`` line."""
    head = f"id: {seq}\nevent: {name}\n" if seq else f"event: {name}\n"
    return f"{head}data: {_dumps(data)}\n\n".encode()


@dataclass(slots=True, frozen=True)
class Event:
    """One entry of the event log, already encoded for the wire.

    ``data`` is the JSON payload as sent, ``frame`` the full SSE frame; stores keep both so
    a replay sends the same bytes the live stream sent.
    """

    seq: int
    ts: float
    name: str
    job_id: str
    task: str
    frame: bytes

    @classmethod
    def create(
        cls, seq: int, ts: float, name: str, *, job_id: str, task: str, payload: dict[str, Any]
    ) -> Event:
        data = {"seq": seq, "ts": round(ts, 6), **payload}
        return cls(seq, ts, name, job_id, task, encode_frame(name, data, seq))

    @classmethod
    def from_json(
        cls, seq: int, ts: float, name: str, *, job_id: str, task: str, payload: str
    ) -> Event:
        """The event :meth:`create` makes, from its payload already encoded as a JSON object:
        ``seq`` and ``ts`` are spliced in front, so events that travel between processes
        (through Redis) are encoded once by the publisher and never parsed to be sent."""
        if not (payload.startswith("{") and payload.endswith("}")):
            raise ValueError(f"payload must be a JSON object, got {payload[:40]!r}")
        rest = payload[1:]
        head = f'{{"seq":{seq},"ts":{_dumps(round(ts, 6))}'
        data = f"{head},{rest}" if rest != "}" else f"{head}}}"
        frame = f"id: {seq}\nevent: {name}\ndata: {data}\n\n".encode()
        return cls(seq, ts, name, job_id, task, frame)

    @property
    def terminal(self) -> bool:
        return self.name in _TERMINAL_NAMES
