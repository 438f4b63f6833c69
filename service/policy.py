"""Who may write, decided from the sockets the server really listens on (not from the configured host), and the
checks of the keys, as plain functions: the route dependencies (``service/deps.py``) and the guard middleware
(``service/guard.py``, which runs them before a body is read) both call them.

The write policy:

* with ``VIDRET_API_KEY`` set, a write needs ``Authorization: Bearer <VIDRET_API_KEY>``; the read key never
  authorises one;
* without it, writes are refused (403) unless ``VIDRET_ALLOW_UNAUTHENTICATED_WRITES=1``, or the server listens only
  on loopback addresses (or a Unix socket) and no ``VIDRET_READ_API_KEY`` is set (a server that asks a key for
  reads does not take writes without one).

"Listens only on loopback" is read from the listening socket that accepted the request: every listening TCP socket
of this process on the request's local port must have a loopback address. So ``uvicorn service.app:create_app
--factory --host 0.0.0.0`` refuses keyless writes, whatever ``VIDRET_HOST`` says. Only when no socket of this
process listens on that port, and the local address is no IP address (an in-process test client), does the
configured host decide.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping

from fastapi import HTTPException

from service.settings import Settings

log = logging.getLogger("vidret.service")
_loopback_only: dict[int, bool] = {}  # local port -> whether every socket listening on it is a loopback one


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _fd_folder() -> str | None:
    for folder in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(folder):
            return folder
    return None


def listening_sockets() -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket this process holds (uvicorn's, gunicorn's inherited ones)."""
    folder = _fd_folder()
    if folder is None:
        return []
    found = []
    for name in os.listdir(folder):
        if not name.isdigit():
            continue
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:  # not a socket, or closed meanwhile
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            ):
                address, port = sock.getsockname()[:2]
                found.append((str(address), int(port)))
        except OSError:
            pass
        finally:
            sock.detach()  # the descriptor stays the server's
    return found


def listens_on_loopback_only(settings: Settings, server: tuple | list | None) -> bool:
    """Whether the socket that accepted a request (ASGI ``scope["server"]``: its local address) listens only on
    loopback addresses."""
    if not server:
        return settings.binds_loopback
    host, port = server[0], server[1] if len(server) > 1 else None
    if port is None:  # a Unix domain socket: reachable from this machine only
        return True
    if port not in _loopback_only:
        addresses = [a for a, p in listening_sockets() if p == port]
        if addresses:
            _loopback_only[port] = all(_is_loopback(a) for a in addresses)
        else:
            try:
                ipaddress.ip_address(str(host).split("%", 1)[0])
            except ValueError:  # no socket and no address: an in-process client (tests); the settings decide
                return settings.binds_loopback
            return False  # a real address but no socket found: refuse rather than guess
    return _loopback_only[port]


def presented_key(headers: Mapping[str, str]) -> bytes:
    """The bearer token of a request as bytes; 401 without an Authorization header, 403 with another scheme."""
    header = headers.get("authorization")
    if header is None or not header.strip():
        raise HTTPException(401, "missing Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise HTTPException(403, "wrong API key: send Authorization: Bearer <key>")
    # Header values arrive as latin-1 text: encoding them back gives the bytes the client sent (a key typed in UTF-8
    # matches its UTF-8 bytes), and comparing bytes never raises, whatever they are.
    return token.strip().encode("latin-1", errors="replace")


def matches(token: bytes, *keys: str | None) -> bool:
    found = False
    for key in keys:
        if key:  # compare against every key, so the time taken does not say which one matched
            found |= hmac.compare_digest(token, key.encode("utf-8"))
    return found


def check_write(settings: Settings, server: tuple | list | None, headers: Mapping[str, str]) -> None:
    """The write policy (module docstring): returns, or raises the 401/403 to answer."""
    if settings.api_key:
        if not matches(presented_key(headers), settings.api_key):
            raise HTTPException(403, "wrong API key")
        return
    if settings.allow_unauthenticated_writes:
        return
    if settings.read_api_key:
        raise HTTPException(
            403,
            "writes are disabled: VIDRET_READ_API_KEY is set but VIDRET_API_KEY is not (the read key never "
            "authorises a write). Set VIDRET_API_KEY and send Authorization: Bearer <key>",
        )
    if listens_on_loopback_only(settings, server):
        return
    where = f"{server[0]}" if server else settings.host
    raise HTTPException(
        403,
        f"writes are disabled: the server listens on a non-loopback address ({where}) without an API key. "
        "Set VIDRET_API_KEY (vidret serve --api-key) and send Authorization: Bearer <key>, "
        "or set VIDRET_ALLOW_UNAUTHENTICATED_WRITES=1 to let anyone who can reach it write",
    )


def check_read(settings: Settings, headers: Mapping[str, str]) -> None:
    """The read policy: open unless VIDRET_READ_API_KEY is set; then it or the write key is needed."""
    if settings.read_api_key and not matches(presented_key(headers), settings.read_api_key, settings.api_key):
        raise HTTPException(403, "wrong API key")


def check_metrics(settings: Settings, headers: Mapping[str, str]) -> None:
    """/metrics: VIDRET_METRICS_API_KEY (or the write key) when set, else the read policy."""
    if settings.metrics_api_key:
        if not matches(presented_key(headers), settings.metrics_api_key, settings.api_key):
            raise HTTPException(403, "wrong API key")
        return
    check_read(settings, headers)


def log_write_policy(settings: Settings) -> None:
    """One line at start (once the sockets listen) when keyless writes are on or off in a way worth saying."""
    if settings.api_key:
        return
    public = sorted({a for a, _ in listening_sockets() if not _is_loopback(a)})
    if settings.allow_unauthenticated_writes and public:
        log.warning(
            "VIDRET_ALLOW_UNAUTHENTICATED_WRITES=1: anyone who reaches %s may add and delete videos", ", ".join(public)
        )
    elif settings.read_api_key and not settings.allow_unauthenticated_writes:
        log.warning("adds and deletes are refused: VIDRET_READ_API_KEY is set without VIDRET_API_KEY")
    elif public and not settings.allow_unauthenticated_writes:
        log.warning("adds and deletes are refused: listening on %s without VIDRET_API_KEY", ", ".join(public))
