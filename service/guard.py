"""The guard: one plain ASGI middleware that decides, before a route runs and before any body is read, whether a
request may go on (docs/api.md, "Limits and security"):

1. **Host.** A ``Host`` header that is no allowed name gets 400 (DNS rebinding: a page whose name resolves to
   127.0.0.1 reaches the server under its own name). Allowed: ``localhost``, ``127.0.0.1``, ``::1``, the
   configured host, the address the connection arrived at, and ``VIDRET_ALLOWED_HOSTS`` (``*``: any).
   ``/health`` and ``/ready`` answer any Host (probes).
2. **Origin.** A request with a method other than GET, HEAD or OPTIONS that a browser marks as coming from another
   origin (``Sec-Fetch-Site`` other than ``same-origin`` or ``none``; an ``Origin`` that is not the ``Host``) gets
   403: a page on another site (another port counts) cannot add, delete, import or decide, even through a
   no-cors form post that needs no preflight. Clients that are not browsers send neither header.
3. **Keys.** The route's key checks (``service/policy.py``) run here too, so an unauthorised upload is refused
   before its body is spooled.
4. **Heavy routes.** Evaluations, uploads and audits each have a number of slots
   (``VIDRET_MAX_CONCURRENT_*``); a request that finds none free gets 503 with ``Retry-After`` at once.
5. **Stalled bodies.** A body that sends nothing for ``VIDRET_BODY_TIMEOUT_S`` gets 408 and the connection is
   closed.
6. **Redirects** (the trailing-slash ones) are made relative, so ``Location`` never repeats the Host header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import require_api_key, require_metrics_key, require_read_key
from service.policy import check_metrics, check_read, check_write
from service.settings import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PROBES = frozenset({"/health", "/ready"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRY_AFTER_S = 2


def heavy_kind(method: str, path: str) -> str | None:
    """Which concurrency limit a route (method and path template) counts against, if any."""
    if method != "POST":
        return None
    if path in ("/v1/evaluate", "/v1/evaluate/queries"):
        return "evaluation"
    if path in ("/v1/videos", "/v1/search/video"):
        return "uploads"
    if path.startswith("/v1/review/audit"):
        return "audit"
    return None


@dataclass
class RouteInfo:
    checks: list[Callable] = field(default_factory=list)  # (settings, scope, headers) -> None or HTTPException
    heavy: str | None = None


def _write(settings: Settings, scope: Scope, headers: Headers) -> None:
    check_write(settings, scope.get("server"), headers)


def _read(settings: Settings, scope: Scope, headers: Headers) -> None:
    check_read(settings, headers)


def _metrics(settings: Settings, scope: Scope, headers: Headers) -> None:
    check_metrics(settings, headers)


CHECKS = {require_api_key: _write, require_read_key: _read, require_metrics_key: _metrics}


def _dependency_calls(dependant) -> list:
    calls = []
    for dep in getattr(dependant, "dependencies", ()):
        calls += [dep.call, *_dependency_calls(dep)]
    return calls


def _host_parts(value: str) -> tuple[str, str]:
    """(name, name[:port]) of a Host header, lower-case, IPv6 brackets removed from the name."""
    value = value.strip().lower().rstrip(".")
    if value.startswith("["):
        return value[1:].partition("]")[0], value
    if value.count(":") == 1:
        return value.partition(":")[0].rstrip("."), value
    return value, value


def _netloc(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port in (None, 80, 443) else f"{host}:{port}"


def _origin_netloc(origin: str) -> str | None:
    try:
        parsed = urlsplit(origin.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            return None
        return _netloc(parsed.hostname.rstrip("."), parsed.port)
    except ValueError:
        return None


def _host_netloc(host_header: str) -> str | None:
    return _origin_netloc(f"http://{host_header}")


def foreign_origin(headers: Headers, named: frozenset[str] = frozenset()) -> str | None:
    """Why a browser's request comes from another origin than the server's own, or None. ``named``: the names of
    VIDRET_ALLOWED_HOSTS, whose origins are the server's too (behind a proxy that rewrites Host)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site.strip()[:40]}"
    origin = headers.get("origin")
    if origin is None:
        return None
    own, theirs = _host_netloc(headers.get("host", "")), _origin_netloc(origin)
    if theirs is not None and (theirs in named or theirs.rpartition(":")[0] in named or theirs.strip("[]") in named):
        return None
    if own is None or theirs != own:
        return f"Origin: {origin.strip()[:100]}"
    return None


async def send_json(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings, router: Router) -> None:
        self.app, self.settings, self.router = app, settings, router
        self.hosts = {h for h in (*LOOPBACK_NAMES, settings.host.strip().strip("[]").lower()) if h}
        self.hosts -= {"0.0.0.0", "::"}
        names = {h.strip().lower() for h in settings.allowed_hosts.split(",") if h.strip()}
        self.named = frozenset(names - {"*"})  # their origins are the server's own too (a proxy may rewrite Host)
        self.hosts |= names
        self.slots = {
            "evaluation": settings.max_concurrent_evaluations,
            "uploads": settings.max_concurrent_uploads,
            "audit": settings.max_concurrent_audits,
        }
        self.routes: dict[int, RouteInfo] = {}  # by position in the flat list of routes
        self.flat: list | None = None

    def _flat_routes(self) -> list:
        """The app's routes, those of included routers flattened (FastAPI >= 0.130 includes routers lazily)."""
        if self.flat is None:
            try:
                from fastapi.routing import iter_route_contexts
            except ImportError:  # older FastAPI: include_router copied the routes
                self.flat = list(self.router.routes)
            else:
                self.flat = list(iter_route_contexts(self.router.routes))
        return self.flat

    def _route(self, scope: Scope) -> RouteInfo:
        for n, route in enumerate(self._flat_routes()):
            match, _ = route.matches(scope)
            if match == Match.FULL:
                if n not in self.routes:
                    calls = _dependency_calls(getattr(route, "dependant", None))
                    self.routes[n] = RouteInfo(
                        checks=[CHECKS[c] for c in calls if c in CHECKS],
                        heavy=heavy_kind(scope["method"], getattr(route, "path", "") or ""),
                    )
                return self.routes[n]
        return RouteInfo()

    def _host_allowed(self, scope: Scope, headers: Headers) -> str | None:
        """None when the Host header is allowed, else the name it gave."""
        value = headers.get("host")
        if value is None or "*" in self.hosts:
            return None
        name, with_port = _host_parts(value)
        server = scope.get("server") or ("",)
        if name in self.hosts or with_port in self.hosts or name == str(server[0]).strip("[]").lower():
            return None
        return value.strip()[:100]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["path"] not in PROBES and (name := self._host_allowed(scope, headers)) is not None:
            detail = f"Host {name!r} is not an allowed name of this server: add it to VIDRET_ALLOWED_HOSTS"
            await send_json(send, 400, detail)
            return
        if scope["method"] not in SAFE_METHODS and (why := foreign_origin(headers, self.named)) is not None:
            await send_json(send, 403, f"cross-origin request refused ({why}): use the server's own page or a client")
            return
        info = self._route(scope)
        try:
            for check in info.checks:
                check(self.settings, scope, headers)
        except HTTPException as exc:
            await send_json(send, exc.status_code, str(exc.detail), exc.headers)
            return
        if info.heavy is not None:
            if self.slots[info.heavy] <= 0:
                setting = f"VIDRET_MAX_CONCURRENT_{info.heavy.upper()}{'' if info.heavy.endswith('s') else 'S'}"
                await send_json(
                    send,
                    503,
                    f"too many {info.heavy} requests at once ({setting}); retry in {RETRY_AFTER_S} s",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
                return
            self.slots[info.heavy] -= 1  # one event loop: no lock needed
        try:
            await self.app(scope, self._timed(receive), self._relative_redirects(send))
        finally:
            if info.heavy is not None:
                self.slots[info.heavy] += 1

    def _timed(self, receive: Receive) -> Receive:
        """``receive`` that answers 408 when the body stalls (only while the body is incomplete: afterwards the app
        may wait as long as it likes for the client to disconnect)."""
        timeout, done = self.settings.body_timeout_s, False

        async def timed_receive() -> Message:
            nonlocal done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body stalled for {timeout:g} s (VIDRET_BODY_TIMEOUT_S)", {"Connection": "close"}
                ) from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return timed_receive

    @staticmethod
    def _relative_redirects(send: Send) -> Send:
        async def relative_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in REDIRECTS:
                message = {**message, "headers": [_relative(k, v) for k, v in message.get("headers", [])]}
            await send(message)

        return relative_send


def _relative(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    if name.lower() != b"location":
        return name, value
    parts = urlsplit(value.decode("latin-1"))
    path = "/" + parts.path.lstrip("/")  # never '//host': a relative reference with a host
    return name, path.encode("latin-1") + (b"?" + parts.query.encode("latin-1") if parts.query else b"")
