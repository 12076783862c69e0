"""The JSON answers of jobcast's routes: encoded by the one encoder, so always encodable.

Errors become answers here too: a domain error as it says itself (its status, headers and
body), and a 422 whose details echo the client's input only as far as it is safe and short.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse

from ._wire import shown_errors
from .events import encode_json_bytes
from .exceptions import JobcastError

__all__ = ["SafeJSONResponse", "error_response", "validation_response"]


class SafeJSONResponse(JSONResponse):
    """A JSON answer rendered by :func:`~jobcast.events.encode_json_bytes`: text that UTF-8
    cannot carry is made safe, and a value JSON cannot carry never makes a 500."""

    def render(self, content: Any) -> bytes:
        return encode_json_bytes(content)


def error_response(exc: JobcastError) -> SafeJSONResponse:
    """The HTTP answer for a domain error, as the error itself says it."""
    return SafeJSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def validation_response(errors: Sequence[Any]) -> SafeJSONResponse:
    """The 422 for invalid input, as FastAPI shapes it (``{"detail": [...]}``), each
    error's input echoed only as far as it is short (see :func:`~jobcast._wire.shown_errors`)."""
    return SafeJSONResponse({"detail": shown_errors(errors)}, status_code=422)
