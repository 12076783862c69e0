"""Who may do what: the access token, the origin check for browsers, CORS, and log redaction.

One :class:`Guard` holds the policy; :class:`~jobcast.policy.Policy` applies it, on the app
``create_app`` makes (so routes the user adds to it are protected too) and on each of
jobcast's routes (so they stay protected when ``JobCast.router`` is mounted into another
app). The policy:

- A request that changes something (any method but GET, HEAD, OPTIONS) needs
  ``Authorization: Bearer <token>`` when a token is set. A cookie never counts for it, so a
  page on another site cannot ride on a browser's cookie (no CSRF). It is also refused when
  a browser says it comes from another origin that is not in ``cors_origins``, token or not.
- With ``protect_reads``, reads need the token too, and also take it from the
  ``jobcast_token`` cookie or ``?token=``: ``EventSource`` cannot send headers. A request that
  authenticates with the header gets that cookie set (``HttpOnly``, ``SameSite=Strict``), so
  the page's streams work without the token in a URL, where access logs would keep it.
- Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import logging
import re
import secrets
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from fastapi import Security
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection

from .exceptions import CrossOrigin, Unauthorized
from .settings import Settings

__all__ = ["COOKIE", "SAFE_METHODS", "Guard", "RedactTokens", "Via", "cors_options"]

#: The cookie a stream takes the token from.
COOKIE = "jobcast_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Via(Enum):
    """How a request was let through."""

    OPEN = "open"  # nothing was required
    HEADER = "header"  # Authorization: Bearer
    COOKIE_OR_QUERY = "cookie or query"


class Guard:
    """The access policy of one service, from its settings."""

    def __init__(self, settings: Settings) -> None:
        self._tokens = tuple(token.encode() for token in settings.token)
        self.protect_reads = settings.protect_reads
        self._origins = frozenset(settings.cors_origins)

    @property
    def enabled(self) -> bool:
        """Whether a token is configured at all."""
        return bool(self._tokens)

    def needs_token(self, *, write: bool) -> bool:
        """Whether a request that changes something (``write``), or a read, needs the token."""
        return bool(self._tokens) and (write or self.protect_reads)

    def check(self, conn: HTTPConnection, *, write: bool) -> Via:
        """Let ``conn`` through, saying how, or raise :class:`~jobcast.exceptions.Unauthorized` or
        :class:`~jobcast.exceptions.CrossOrigin`."""
        if write:
            self._check_origin(conn)
        if not self.needs_token(write=write):
            return Via.OPEN
        header = conn.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() == "bearer" and self.valid(value.strip()):
                return Via.HEADER
            # Credentials sent and wrong: say so rather than fall back to a cookie.
            raise Unauthorized(reads=not write)
        if not write:
            candidate = conn.query_params.get("token")
            if candidate is None:
                candidate = conn.cookies.get(COOKIE)
            if candidate is not None and self.valid(candidate):
                return Via.COOKIE_OR_QUERY
        raise Unauthorized(reads=not write)

    def valid(self, candidate: str) -> bool:
        """Whether ``candidate`` is one of the tokens, in time independent of which one."""
        given = candidate.encode("utf-8", "replace")
        found = False
        for token in self._tokens:
            found |= secrets.compare_digest(given, token)
        return found

    def wants_cookie(self, conn: HTTPConnection) -> str | None:
        """The token to set as the stream cookie after ``conn`` authenticated with the header,
        or None when the cookie is not needed or already holds it."""
        if not self.protect_reads:
            return None
        _, _, token = conn.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        return None if conn.cookies.get(COOKIE) == token else token

    def _check_origin(self, conn: HTTPConnection) -> None:
        # Browsers send Origin with every cross-origin request that can change something;
        # scripts and curl send none. A page of the server's own origin is always welcome.
        origin = conn.headers.get("origin")
        if origin is None or origin in self._origins or "*" in self._origins:
            return
        host = conn.headers.get("host", "")
        if origin != "null" and host and urlsplit(origin).netloc.lower() == host.lower():
            return
        raise CrossOrigin(origin[:200])

    def dependencies(self, *, write: bool) -> list[DependsParam]:
        """What a FastAPI router declares for this policy, so /docs offers "Authorize" where
        the token is needed; checking it is :class:`~jobcast.policy.Policy`'s job."""
        if not self.needs_token(write=write):
            return []
        scheme = HTTPBearer(auto_error=False, description="The server's token (JOBCAST_TOKEN).")
        return [Security(scheme)]


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """Starlette ``CORSMiddleware`` options for ``settings``, or None to leave CORS off."""
    origins = list(settings.cors_origins)
    if not origins:
        return None
    return {
        "allow_origins": origins,
        # "*" with credentials would let any site act with a visitor's cookie: never both.
        "allow_credentials": origins != ["*"],
        "allow_methods": ["GET", "HEAD", "POST"],
        "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
        "expose_headers": ["Location", "Retry-After"],
        "max_age": 600,
    }


def cookie_header(token: str, *, secure: bool, path: str) -> bytes:
    """The ``Set-Cookie`` value that lets streams authenticate without a token in the URL."""
    flags = f"; Path={path or '/'}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    return f"{COOKIE}={token}{flags}".encode("latin-1")


class RedactTokens(logging.Filter):
    """Hides ``token=`` values in uvicorn's access log lines (a stream may take ``?token=``)."""

    _PATTERN = re.compile(r"([?&]token=)[^&\s]*")

    @classmethod
    def install(cls, logger: str = "uvicorn.access") -> None:
        """Add the filter to ``logger`` once. uvicorn's logging setup keeps it, whether it
        runs before the app is made (``uvicorn module:app``) or after (``jobcast serve``)."""
        target = logging.getLogger(logger)
        if not any(isinstance(existing, cls) for existing in target.filters):
            target.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(
            isinstance(arg, str) and "token=" in arg for arg in args
        ):
            record.args = tuple(
                self._PATTERN.sub(r"\1<hidden>", arg) if isinstance(arg, str) else arg
                for arg in args
            )
        return True
