"""The app factory: the FastAPI app that serves a :class:`~jobcast.JobCast`.

It brings together jobcast's router, the page, the policy for every route of the app
(:class:`~jobcast.policy.Policy`) and the answers to errors of routes a user adds. The
service itself comes from the JobCast's lifespan, as its state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import Scope

from . import __version__
from .docs import serve_docs
from .exceptions import JobcastError
from .policy import Policy
from .responses import error_response
from .security import RedactTokens

if TYPE_CHECKING:
    from .app import JobCast

__all__ = ["add_page", "create_app"]


def _static_dir() -> Path:
    # Inside a wheel the page ships as jobcast/static; in a source checkout it is top-level.
    packaged = Path(__file__).with_name("static")
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "static"


def add_page(app: FastAPI) -> None:
    """Serve the dashboard page at ``/`` of ``app`` and its files under ``/static``, and the
    docs page at ``app.docs_url`` with every file from the server (see :mod:`jobcast.docs`)."""
    serve_docs(app)
    static = _static_dir()
    app.mount("/static", _PageFiles(directory=static, check_dir=False), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static / "index.html")


class _PageFiles(StaticFiles):
    """The page's files, with the media types a machine's ``/etc/mime.types`` may get wrong
    or lack (Debian's names ``.ts`` a Qt translation file; Python's own list calls ``.js``
    ``application/javascript``)."""

    MEDIA_TYPES: ClassVar[dict[str, str]] = {
        ".js": "text/javascript; charset=utf-8",
        ".ts": "application/typescript; charset=utf-8",
    }

    def file_response(
        self, full_path: Any, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        media_type = self.MEDIA_TYPES.get(Path(full_path).suffix)
        if media_type is not None and response.status_code == 200:
            response.headers["content-type"] = media_type
        return response


def create_app(jobs: JobCast, **fastapi_options: Any) -> FastAPI:
    """A FastAPI app serving the API and streams of ``jobs``, and the dashboard page.

    With a token set, every route of the app follows the access policy (see
    :mod:`jobcast.security`), routes added to it later included; the health check, the
    page, its static files and the docs page stay open (the page asks for the token).
    """
    settings = jobs.settings
    fastapi_options.setdefault("title", "jobcast")
    fastapi_options.setdefault("version", __version__)
    fastapi_options.setdefault("redoc_url", None)  # no copy of ReDoc to serve offline
    app = FastAPI(lifespan=jobs.lifespan, **fastapi_options)
    open_paths = {
        "/",
        "/healthz",
        app.docs_url,
        app.redoc_url,
        app.swagger_ui_oauth2_redirect_url,
    }
    # The same policy as on jobcast's routes, here for every route of the app (the page, the
    # docs, routes the user adds); it runs once per request.
    policy = [
        Middleware(
            Policy,
            settings=settings,
            open_paths={path for path in open_paths if path},
            open_prefixes=("/static/",),
        )
    ]
    app.user_middleware[:0] = policy
    app.add_exception_handler(JobcastError, _jobcast_error)
    app.add_exception_handler(405, _method_not_allowed)
    if settings.token:
        RedactTokens.install()
    app.include_router(jobs.router)
    add_page(app)
    return app


async def _jobcast_error(request: Request, exc: Exception) -> Response:
    # jobcast's own routes answer their errors themselves (JobcastRoute); this covers the
    # routes a user adds to the app, such as the demo's recipe endpoints calling the runner.
    assert isinstance(exc, JobcastError)
    return error_response(exc)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    # Starlette's Allow names the methods of the first route whose path matches; a path
    # served by several routes (GET and POST /api/background-task in the demo) must list
    # them all (RFC 9110), or a client cannot tell what it may do there.
    scope, routes = request.scope, request.app.router.routes

    def serves(method: str) -> bool:
        probe = {**scope, "method": method}
        return any(route.matches(probe)[0] is Match.FULL for route in routes)

    if serves(scope["method"]):
        # A mounted app (the static files) took the request and refused it: it knows best.
        allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
    else:
        allow = ", ".join(method for method in _METHODS if serves(method))
    detail = getattr(exc, "detail", None) or "Method Not Allowed"
    return JSONResponse(
        {"detail": detail}, status_code=405, headers={"Allow": allow} if allow else {}
    )
