"""The JSON answers of jobcast's routes: encoded by the one encoder, so always encodable.

Errors become answers here too: a domain error as it says itself (its status, headers and
body), and a 422 whose details echo the client's input only as far as it is safe and short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse

from ._wire import describe
from .events import encode_json_bytes
from .exceptions import JobcastError

__all__ = ["SafeJSONResponse", "error_response", "validation_response"]

#: Characters of a client's string, and items of its list or object, echoed in a 422.
_ECHO_TEXT = 200
_ECHO_ITEMS = 20


class SafeJSONResponse(JSONResponse):
    """A JSON answer rendered by :func:`~jobcast.events.encode_json_bytes`: text that UTF-8
    cannot carry is made safe, and a value JSON cannot carry never makes a 500."""

    def render(self, content: Any) -> bytes:
        return encode_json_bytes(content)


def error_response(exc: JobcastError) -> SafeJSONResponse:
    """The HTTP answer for a domain error, as the error itself says it."""
    return SafeJSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def validation_response(errors: Sequence[Any]) -> SafeJSONResponse:
    """The 422 for invalid params, as FastAPI shapes it (``{"detail": [...]}``), with each
    error's ``input`` echoed only as far as it is short, and numbers JSON cannot carry
    written as text: a 45 MB body is not sent back, and ``NaN`` is not a 500."""
    detail = []
    for error in errors:
        if not isinstance(error, dict):
            detail.append({"msg": describe(error, 1000)})
            continue
        shown = {key: value for key, value in error.items() if key not in ("input", "ctx")}
        if "input" in error:
            shown["input"] = _echo(error["input"], 0)
        if isinstance(error.get("ctx"), dict):
            shown["ctx"] = {str(key): _echo(value, 0) for key, value in error["ctx"].items()}
        detail.append(shown)
    return SafeJSONResponse({"detail": detail}, status_code=422)


def _echo(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return describe(value, _ECHO_TEXT)
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else describe(value, 40)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict | list | tuple):
        if depth >= 3 or len(value) > _ECHO_ITEMS:
            kind = "object" if isinstance(value, dict) else "list"
            return f"<an {kind} of {len(value)} items, not echoed>"
        if isinstance(value, dict):
            return {
                describe(key, _ECHO_TEXT): _echo(item, depth + 1) for key, item in value.items()
            }
        return [_echo(item, depth + 1) for item in value]
    return describe(value, _ECHO_TEXT)
