"""Events and their one encoding: every event is turned into SSE bytes exactly once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from ._wire import REPLACEMENT, SURROGATE, clean, safe_text
from .jobs import TERMINAL_STATES

__all__ = ["Event", "encode_frame", "encode_json", "encode_json_bytes", "job_payload"]

logger = logging.getLogger("jobcast")

_TERMINAL_NAMES = frozenset(state.value for state in TERMINAL_STATES)

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _dumps(data: Any) -> str:
    """Compact JSON, UTF-8 kept, that never fails: what JSON cannot carry (a bug: values are
    checked where they enter) is logged and sent as its description instead."""
    try:
        return _encoder.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        logger.error("jobcast had to clean a value it could not encode (%s)", exc, exc_info=exc)
        return _encoder.encode(clean(data))


def encode_json(data: Any) -> str:
    """JSON as every event, answer and stored job is encoded: compact, UTF-8 kept, no NaN,
    and text that UTF-8 can carry (each lone surrogate becomes U+FFFD)."""
    return safe_text(_dumps(data))


def encode_json_bytes(data: Any) -> bytes:
    """:func:`encode_json` as UTF-8 bytes."""
    return _utf8(_dumps(data))


def _utf8(text: str) -> bytes:
    # The encode is needed anyway: text is checked by trying it, at no cost when it passes.
    try:
        return text.encode()
    except UnicodeEncodeError:
        return SURROGATE.sub(REPLACEMENT, text).encode()


def job_payload(name: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    """What the event ``name`` about a job carries: its snapshot; a ``retrying`` event also
    the failed attempt's error, the next attempt and when it runs (as its snapshot says)."""
    if name == "retrying":
        return {
            "job": snapshot,
            "error": snapshot["error"],
            "attempt": snapshot["attempt"],
            "run_at": snapshot["run_at"],
        }
    return {"job": snapshot}


def encode_frame(name: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    """One SSE frame: ``id:`` (when ``seq`` is given), ``event:`` and one ``data:`` line."""
    head = f"id: {seq}\nevent: {name}\n" if seq else f"event: {name}\n"
    return _utf8(f"{head}data: {_dumps(data)}\n\n")


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
        frame = _utf8(f"id: {seq}\nevent: {name}\ndata: {data}\n\n")
        return cls(seq, ts, name, job_id, task, frame)

    def data(self) -> dict[str, Any]:
        """The payload, as sent (``seq`` and ``ts`` included)."""
        _, _, data = self.frame.partition(b"\ndata: ")
        payload: dict[str, Any] = json.loads(data)
        return payload

    @property
    def terminal(self) -> bool:
        return self.name in _TERMINAL_NAMES
