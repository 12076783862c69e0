"""Events and their one encoding: every event is turned into SSE bytes exactly once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .jobs import TERMINAL_STATES

__all__ = ["Event", "encode_frame"]

_TERMINAL_NAMES = frozenset(state.value for state in TERMINAL_STATES)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


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

    @property
    def terminal(self) -> bool:
        return self.name in _TERMINAL_NAMES
