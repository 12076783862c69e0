"""The app factory: the FastAPI app that serves a :class:`~jobcast.JobCast`.

It brings together jobcast's router, the page, the policy for every route of the app
(:class:`~jobcast.policy.Policy`), the answers to errors of routes a user adds, and the
streams' fast path. The service itself comes from the JobCast's lifespan, as its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp

from . import __version__
from ._asgi import StreamFastPath
from ._limits import StreamSlots
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
    app.mount("/static", StaticFiles(directory=static, check_dir=False), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static / "index.html")


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
    app = _App(lifespan=jobs.lifespan, **fastapi_options)
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
    app.stream_fast_path = _FastPathSpec(
        streams=jobs.streams,
        policy=policy,
        exception_handlers=dict(app.exception_handlers),
    )
    return app


@dataclass(slots=True, frozen=True)
class _FastPathSpec:
    """What :class:`StreamFastPath` needs, and the app's policy as ``create_app`` left it."""

    streams: StreamSlots
    policy: list[Middleware]
    exception_handlers: dict[Any, Any]


class _App(FastAPI):
    """FastAPI, with jobcast's two SSE GETs served by :class:`~jobcast._asgi.StreamFastPath`.

    The fast path sits outside the whole middleware stack that FastAPI builds, and applies the
    app's own policy middleware itself. Only as long as the app is as ``create_app`` made it:
    middleware or exception handlers added afterwards must see the streams too, so with those
    the streams go through the framework like every other route.
    """

    stream_fast_path: _FastPathSpec | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        spec = self.stream_fast_path
        if (
            spec is None
            or self.user_middleware != spec.policy
            or self.exception_handlers != spec.exception_handlers
            or getattr(self, "max_body_size", None) is not None  # newer FastAPI: its own limit
        ):
            return stack
        error_handler = None
        for key, value in self.exception_handlers.items():  # as FastAPI picks it
            if key in (500, Exception):
                error_handler = value
        return StreamFastPath(
            stack,
            streams=spec.streams,
            policy=spec.policy,
            error_handler=error_handler,
            debug=self.debug,
        )


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
