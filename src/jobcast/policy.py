"""The policy every request of jobcast meets, in one pure ASGI layer: the Host check, CORS,
the access token and the origin check, and the body size limit.

:class:`Policy` wraps the app ``create_app`` makes (so routes added to it are covered too),
and each of jobcast's own routes (so the rules hold when ``JobCast.router`` is mounted into
another app). It runs once per request: the outermost layer marks the request, and the
layers it meets further in let it through. Pure ASGI, because ``BaseHTTPMiddleware``
re-streams every SSE chunk.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .exceptions import JobcastError
from .responses import SafeJSONResponse, error_response
from .security import SAFE_METHODS, Guard, Via, cookie_header, cors_options
from .settings import Settings

__all__ = ["AccessControl", "AllowedHosts", "BodySizeLimit", "HostCheck", "Policy", "route_path"]

#: The scope key that says the policy has been applied to this request.
_APPLIED = "jobcast.policy"


class Policy:
    """Everything jobcast checks before a request reaches a route, applied once.

    Outermost first: the Host check refuses what DNS rebinding would send; CORS answers
    preflights and marks every answer, refusals included, so a browser page can read why;
    then the token and the origin; then the body size. ``open_paths`` and
    ``open_prefixes`` can be read without the token (the health check, the page, the docs);
    ``guard=False`` leaves the token out entirely (a route that is always open).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        guard: bool = True,
        open_paths: Collection[str] = (),
        open_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        chain: ASGIApp = BodySizeLimit(app, max_bytes=settings.max_body_bytes)
        if guard:
            chain = AccessControl(
                chain, guard=Guard(settings), open_paths=open_paths, open_prefixes=open_prefixes
            )
        cors = cors_options(settings)
        if cors is not None:
            chain = CORSMiddleware(chain, **cors)
        self._chain = HostCheck(chain, hosts=AllowedHosts(settings.allowed_hosts))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get(_APPLIED):
            await self.app(scope, receive, send)
            return
        scope[_APPLIED] = True
        await self._chain(scope, receive, send)


class AllowedHosts:
    """Which ``Host`` a request may name: what stops DNS rebinding.

    A page that rebinds its own name to this server's address sends that name as ``Host``;
    this server refuses names it does not know. Allowed are IP addresses (a page can only
    name one by being served from it), ``localhost`` and names under ``.localhost``
    (browsers resolve them to loopback themselves), and ``names``: exact names, ``*.suffix``
    patterns, or ``*`` for any.
    """

    def __init__(self, names: Collection[str]) -> None:
        cleaned = {name.strip().lower().rstrip(".") for name in names if name.strip()}
        self.any = "*" in cleaned
        self.names = frozenset(name for name in cleaned if not name.startswith("*"))
        self.suffixes = tuple(name[1:] for name in cleaned if name.startswith("*."))

    def allows(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header (with or without a port) may pass."""
        if host is None or self.any:
            return True  # HTTP/1.0 without Host: no browser sends that
        name = _hostname(host)
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost"):
            return True
        if name in self.names or name.endswith(self.suffixes):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def describe(self) -> str:
        """The rule in words, for a start line."""
        if self.any:
            return "any host"
        shown = [
            "localhost",
            "IP addresses",
            *sorted(self.names),
            *(f"*{s}" for s in self.suffixes),
        ]
        return ", ".join(shown)


def _hostname(host: str) -> str | None:
    """The name or address of a ``Host`` value, lower case, without port; None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal, with or without a port
        end = host.find("]")
        rest = host[end + 1 :] if end > 0 else ":x"
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return host[1:end]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = name
    host = host.rstrip(".")
    if not host or any(c in host for c in "/\\@ \t"):
        return None
    return host


class HostCheck:
    """Answer 400 to a request whose ``Host`` is not allowed, before anything else runs."""

    def __init__(self, app: ASGIApp, *, hosts: AllowedHosts) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = _header(scope, b"host")
        if self.hosts.allows(host):
            await self.app(scope, receive, send)
            return
        shown = (host or "")[:100]
        message = (
            f"this server does not answer to the host {shown!r}; if that is its name, add it "
            "to JOBCAST_ALLOWED_HOSTS (a comma-separated list; '*.example.com' allows a domain)"
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        await SafeJSONResponse({"detail": message}, status_code=400)(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


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
        path = route_path(scope)
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


def route_path(scope: Scope) -> str:
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
                await self._refuse(scope, receive, send)
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
                    await self._refuse(scope, receive, send)
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(bytes(body), receive)
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = (
            f"request body is larger than {self.max_bytes} bytes; send a smaller body (the "
            "limit is JOBCAST_MAX_BODY_BYTES)"
        )
        await SafeJSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
