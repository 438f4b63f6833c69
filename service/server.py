"""Running the app under uvicorn with defences against slow clients, which an ASGI app cannot see (docs/api.md,
"Limits and security"):

* **Header timeout.** uvicorn waits for a request's headers as long as the client likes (its keep-alive timeout
  covers only the pause between two requests), so a few hundred half-sent requests hold as many connections and
  file descriptors. The protocol here closes a connection whose headers are not complete within
  ``VIDRET_HEADER_TIMEOUT_S``, on a new connection and between the requests of a kept-alive one.
* **Connection bound.** Past ``VIDRET_MAX_CONNECTIONS`` open connections (by default from the file limit), a new
  connection is answered 503 and closed at once, so connections never use up the descriptors that files, the index
  and the health checks need.
* **File limit.** ``raise_file_limit`` raises the soft RLIMIT_NOFILE to the hard limit at start where allowed.

``vidret serve`` runs this; uvicorn started directly gets it with
``uvicorn service.app:create_app --factory --http service.server:HttpProtocol`` (settings from ``VIDRET_*``).
"""

from __future__ import annotations

import asyncio
import logging

from service.settings import Settings

log = logging.getLogger("vidret.service")
FILE_LIMIT_CAP = 65_536  # the soft file limit asked for at most (a hard limit may be "unlimited")
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
BUSY_BODY = b'{"detail": "too many open connections (VIDRET_MAX_CONNECTIONS)"}'


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most FILE_LIMIT_CAP) where allowed; the soft limit then."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FILE_LIMIT_CAP if hard == resource.RLIM_INFINITY else min(hard, FILE_LIMIT_CAP)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as exc:
            log.warning("could not raise the file limit from %d to %d: %s", soft, want, exc)
    return FILE_LIMIT_CAP if soft == resource.RLIM_INFINITY else soft


def connection_limit(settings: Settings, file_limit: int) -> int:
    """VIDRET_MAX_CONNECTIONS, or (0) the file limit less a quarter of it (at least 64) kept for everything else."""
    if settings.max_connections:
        return settings.max_connections
    return max(16, file_limit - max(64, file_limit // 4))


class GuardedConnection:
    """Mixin over a uvicorn HTTP protocol class (h11 or httptools): the header timeout and the connection bound."""

    header_timeout: float = 10.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:  # type: ignore[attr-defined]
            body = BUSY_BODY
            transport.write(BUSY + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _between_requests(self) -> bool:
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is None or cycle.response_complete

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():  # type: ignore[attr-defined]
            log.info("closing a connection whose request headers took over %g s", self.header_timeout)
            self.transport.close()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm()  # the bytes of a new request: its headers have header_timeout from now
        before = self.cycle  # type: ignore[attr-defined]
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # type: ignore[attr-defined]  # the headers are complete: a new request runs
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


def protocol_class(settings: Settings, file_limit: int | None = None) -> type:
    """A uvicorn HTTP protocol class (httptools when installed, else h11) with ``settings``' slow-client limits."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base
    limit = connection_limit(settings, raise_file_limit() if file_limit is None else file_limit)
    attrs = {"header_timeout": settings.header_timeout_s, "max_connections": limit}
    return type(f"Guarded{Base.__name__}", (GuardedConnection, Base), attrs)


def run(app, settings: Settings, log_level: str = "info") -> None:
    """Serve ``app`` as ``vidret serve`` does."""
    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        http=protocol_class(settings),
    )


def __getattr__(name: str):  # `uvicorn ... --http service.server:HttpProtocol`: the class from VIDRET_* settings
    if name == "HttpProtocol":
        return protocol_class(Settings())
    raise AttributeError(name)
