"""``create_app(settings)``: wiring only — routers, error handlers, metrics, the web page, loading."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import evaluate, health, review, search, videos
from service.deps import AUTH_RESPONSES, require_read_key
from service.errors import ERRORS, domain_error
from service.middleware import LimitBodySize, Metrics, RecordMetrics
from service.settings import Settings
from service.state import ServiceState

WEB = Path(__file__).parent / "web"
log = logging.getLogger("vidret.service")
NONE = "'none'"


def _page_headers(html: str) -> dict[str, str]:
    """Headers of the web page: a content security policy that runs only the page's own inline script (by hash),
    so markup that reached the page could not run code even if it were rendered as HTML."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    csp = (
        f"default-src 'none'; script-src {hashes or NONE}; style-src 'unsafe-inline'; img-src 'self' blob:; "
        "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings | None = None, load_in_background: bool = True) -> FastAPI:
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not settings.api_key and not settings.binds_loopback:
            if settings.allow_unauthenticated_writes:
                log.warning(
                    "VIDRET_ALLOW_UNAUTHENTICATED_WRITES=1: anyone who reaches %s may add and delete videos",
                    settings.host,
                )
            else:
                log.warning("adds and deletes are refused: listening on %s without VIDRET_API_KEY", settings.host)
        if load_in_background:
            threading.Thread(target=state.load, name="vidret-load", daemon=True).start()
        else:
            state.load()
        yield
        state.close()

    app = FastAPI(
        title="vidret",
        version="0.1.0",
        lifespan=lifespan,
        description="Video retrieval: search by id, vector or uploaded video; add, delete, evaluate.",
    )
    app.state.vidret = state
    app.include_router(health.router)  # /health, /ready, /metrics stay open
    # reads need VIDRET_READ_API_KEY when it is set (writes: their own)
    for router in (search.router, videos.router, evaluate.router, review.router):
        app.include_router(router, dependencies=[Depends(require_read_key)], responses=AUTH_RESPONSES)
    html = (WEB / "index.html").read_text(encoding="utf-8")
    page_headers = _page_headers(html)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:  # served without a key: its API calls send the key the user enters
        return HTMLResponse(html, headers=page_headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    for error in ERRORS:  # domain errors: one table (service/errors.py)
        app.add_exception_handler(error, domain_error)

    app.add_middleware(LimitBodySize, settings=settings)
    app.add_middleware(RecordMetrics, metrics=state.metrics)

    return app
