"""Pure ASGI middleware (no ``BaseHTTPMiddleware``: it re-streams every SSE chunk)."""

from __future__ import annotations

import json
from collections.abc import Collection

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import error_response
from .exceptions import JobcastError
from .security import SAFE_METHODS, Guard, Via, cookie_header

__all__ = ["AccessControl", "BodySizeLimit"]


class AccessControl:
    """Apply a :class:`~jobcast.security.Guard` to every request of an app.

    Paths in ``open_paths`` (and under ``open_prefixes``) can be read without the token: the
    health check, the page and its static files, the docs page. Everything else, including
    routes the user adds to the app, follows the guard's policy. After a request
    authenticates with the header, it sets the stream cookie when the streams need it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: Guard,
        open_paths: Collection[str] = (),
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.guard = guard
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        write = scope["type"] == "http" and scope["method"] not in SAFE_METHODS
        path = _route_path(scope)
        if not write and (path in self.open_paths or path.startswith(self.open_prefixes)):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        try:
            via = self.guard.check(conn, write=write)
        except JobcastError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": str(exc)[:120]})
            else:
                await error_response(exc)(scope, receive, send)
            return
        token = self.guard.wants_cookie(conn) if via is Via.HEADER else None
        if token is not None and scope["type"] == "http":
            send = _with_cookie(
                send,
                cookie_header(
                    token, secure=scope.get("scheme") == "https", path=scope.get("root_path", "")
                ),
            )
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _with_cookie(send: Send, cookie: bytes) -> Send:
    async def send_with_cookie(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"set-cookie", cookie)]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cookie


class BodySizeLimit:
    """Answer 413 to requests whose body is larger than ``max_bytes``, before any route runs.

    A declared ``Content-Length`` is refused at once; a chunked body is read up to the limit
    and refused as soon as it passes it.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes!r}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(send)
                return
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            # No declared length: read the body up to the limit first, then replay it.
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                body += message.get("body", b"")
                if len(body) > self.max_bytes:
                    await self._refuse(send)
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(bytes(body), receive)
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "detail": f"request body is larger than {self.max_bytes} bytes; "
                "send a smaller body (the limit is JOBCAST_MAX_BODY_BYTES)"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
