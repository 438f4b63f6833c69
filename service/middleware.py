"""Prometheus metrics and two plain ASGI middlewares (Starlette's BaseHTTPMiddleware costs a task and a stream per
request): request metrics, and the request body size limit."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import Settings

MULTIPART_ALLOWANCE = 64 * 1024  # multipart framing and form fields around the file


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vidret_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "vidret_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.index_size = Gauge("vidret_index_size", "videos in the index", registry=self.registry)


class RecordMetrics:
    """Counts and times every request by route template (a plain ASGI middleware: Starlette's BaseHTTPMiddleware
    costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], name, str(status)).inc()
            self.metrics.latency.labels(scope["method"], name).observe(time.perf_counter() - t0)


class LimitBodySize:
    """Refuses a request body over its limit with 413 before it is stored: a multipart upload over
    ``VIDRET_MAX_UPLOAD_MB`` (plus the multipart framing allowance), any other body (JSON) over ``VIDRET_MAX_JSON_KB``,
    so that a JSON body is never parsed past that. At once from a declared ``Content-Length``, and for a chunked body
    as soon as the bytes received pass the limit. FastAPI parses a form before the route's dependencies run, so this
    cannot be a dependency."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.upload_limit = int(settings.max_upload_mb * 2**20) + MULTIPART_ALLOWANCE
        self.upload_detail = f"request body larger than VIDRET_MAX_UPLOAD_MB={settings.max_upload_mb:g}"
        self.json_limit = settings.max_json_kb * 1024
        self.json_detail = (
            f"request body larger than VIDRET_MAX_JSON_KB={settings.max_json_kb} (only multipart uploads may be larger)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if headers.get(b"content-type", b"").lower().lstrip().startswith(b"multipart/form-data"):
            limit, detail = self.upload_limit, self.upload_detail
        else:
            limit, detail = self.json_limit, self.json_detail
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(send, detail)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # answered by the app's error handler; closing the connection stops the client sending more
                    raise HTTPException(413, detail, headers={"Connection": "close"})
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send: Send, detail: str) -> None:
        body: Any = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
