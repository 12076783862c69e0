"""The API docs page, served with every file it needs from the server itself.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN, and so is blank offline. This one is
FastAPI's self-hosting recipe fed by the copy of Swagger UI that the ``swagger-ui-bundle-v2``
package ships (Apache-2.0), served under ``/static/swagger-ui``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from swagger_ui_bundle import swagger_ui_path

__all__ = ["ASSETS", "serve_docs"]

#: Where Swagger UI's files are served: under the page's ``/static``, which stays open when
#: a token protects reads (as the docs page does).
ASSETS = "/static/swagger-ui"


def serve_docs(app: FastAPI) -> None:
    """Serve the docs page at ``app.docs_url`` (and its OAuth2 redirect page) from files of
    this server, in place of the pages FastAPI made: its docs page and ReDoc, which load
    their scripts from a CDN (ReDoc has no copy here, so it is not served).

    Only what FastAPI itself set up is replaced; with ``docs_url=None`` there is no page.
    """
    openapi_url, docs_url = app.openapi_url, app.docs_url
    redirect_url = app.swagger_ui_oauth2_redirect_url if docs_url else None
    if openapi_url:  # as FastAPI.setup() does
        made_by_fastapi = {docs_url, redirect_url, app.redoc_url} - {None}
        app.router.routes[:] = [
            route for route in app.router.routes if not _serves(route, made_by_fastapi)
        ]
    app.redoc_url = None
    if openapi_url is None or docs_url is None:
        return
    # First: a /static mount (the page's, or the app's own) would take these paths.
    assets = Mount(ASSETS, app=StaticFiles(directory=swagger_ui_path), name="swagger-ui")
    app.router.routes.insert(0, assets)

    async def docs_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
            oauth2_redirect_url=root + redirect_url if redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    app.add_route(docs_url, docs_page, include_in_schema=False)
    if redirect_url:

        async def oauth2_redirect(request: Request) -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

        app.add_route(redirect_url, oauth2_redirect, include_in_schema=False)


def _serves(route: BaseRoute, paths: set[str | None]) -> bool:
    """Whether ``route`` is a plain route at one of ``paths`` (the pages FastAPI adds)."""
    return isinstance(route, Route) and route.path in paths
