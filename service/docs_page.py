"""``/docs``: Swagger UI from local assets only (``VIDRET_DOCS=1`` and ``VIDRET_DOCS_ASSETS``, a folder of the
swagger-ui-dist package), never from a third-party host: the page would otherwise run a CDN's script next to a key
the user types in, and fail offline. Off by default; ``/openapi.json`` is always served."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from indexing.errors import UserError
from service.settings import Settings

ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")
CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def add_docs(app: FastAPI, settings: Settings) -> None:
    folder = settings.docs_assets
    missing = [a for a in ASSETS if folder is None or not (folder / a).is_file()]
    if missing:
        raise UserError(
            f"VIDRET_DOCS=1 needs VIDRET_DOCS_ASSETS: a folder holding {' and '.join(ASSETS)} "
            f"(the swagger-ui-dist package); {'it is not set' if folder is None else f'{folder} lacks {missing[0]}'}"
        )
    app.mount("/docs/assets", StaticFiles(directory=folder), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="vidret API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="data:,",  # no request to another host, not even for the icon
        )
        page.headers["Content-Security-Policy"] = CSP
        return page
