"""``create_app(settings)``: wiring only — routers, error handlers, metrics, the web page, loading."""

from __future__ import annotations

import asyncio
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

from service import integrity
from service.api import evaluate, health, review, search, videos
from service.deps import AUTH_RESPONSES, require_read_key
from service.docs_page import add_docs
from service.errors import ERRORS, domain_error
from service.guard import Guard
from service.middleware import LimitBodySize, Metrics, RecordMetrics
from service.policy import log_write_policy
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


MAX_LISTED_ERRORS = 10  # a 422 names this many errors at most (a huge invalid body must not get a huger answer)
MAX_ERROR_CHARS = 200  # and each in this many characters at most


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    parts = []
    for err in errors[:MAX_LISTED_ERRORS]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",)) or "body"
        part = f"{loc}: {err.get('msg', 'invalid')}"
        parts.append(part if len(part) <= MAX_ERROR_CHARS else part[: MAX_ERROR_CHARS - 3] + "...")
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more errors")
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings | None = None, load_in_background: bool = True) -> FastAPI:
    settings = settings or Settings()
    state = ServiceState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the sockets listen once the lifespan has started: say what the write policy is then
        asyncio.get_running_loop().call_later(1.0, log_write_policy, settings)
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
        docs_url=None,  # service/docs_page.py: only with local assets (VIDRET_DOCS, VIDRET_DOCS_ASSETS)
        redoc_url=None,
        description="Video retrieval: search by id, vector or uploaded video; add, delete, evaluate.",
    )
    app.state.vidret = state
    app.include_router(health.router)  # /health, /ready stay open; /metrics needs its key or the read key
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

    if settings.docs:
        add_docs(app, settings)
    integrity.install(app)  # a full disk: 507 with a detail
    app.add_middleware(LimitBodySize, settings=settings)
    app.add_middleware(Guard, settings=settings, router=app.router)  # before the body limit: Host, origin, keys
    app.add_middleware(RecordMetrics, metrics=state.metrics)

    return app
