"""Dependencies shared by the routers: the state, readiness, auth, the declared upload size. They never block,
so they are ``async``: FastAPI runs them on the event loop instead of handing each to a worker thread.

Access policy (the two auth dependencies below are the only places that decide it):

* writes (adding, deleting videos: every route that depends on :func:`require_api_key`) need
  ``Authorization: Bearer <VIDRET_API_KEY>`` when that key is set; without it they are refused with a 403, unless the
  server binds to a loopback address or ``VIDRET_ALLOW_UNAUTHENTICATED_WRITES=1``;
* reads (``/v1/...``, attached to the routers in ``create_app``) need ``Bearer <VIDRET_READ_API_KEY>`` or the write
  key when a read key is set, and are open otherwise.
"""

from __future__ import annotations

import hmac
import os
import re

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPBearer

from service.settings import Settings
from service.state import ServiceState

# Declared for the OpenAPI document (the "Authorize" button of /docs); the header is checked by hand below, so
# that every Authorization value, whatever its bytes, gets a 401 or a 403.
bearer = HTTPBearer(
    auto_error=False,
    description="Bearer key: VIDRET_API_KEY for writes; VIDRET_READ_API_KEY (or "
    "the write key) for reads when a read key is set.",
)
AUTH_RESPONSES: dict = {
    401: {"description": "missing Authorization header"},
    403: {"description": "wrong key, or writes disabled"},
}


async def get_state(request: Request) -> ServiceState:
    return request.app.state.vidret


def load_error_message(state: ServiceState) -> str:
    """What clients are told about a failed load: the exception type only (its text names server paths; the full
    text is in the server log)."""
    kind = (state.load_error or "").split(":", 1)[0].strip()
    kind = f" ({kind})" if kind.isidentifier() else ""
    return f"the index failed to load{kind}; the server log has the details"


async def ready_state(state: ServiceState = Depends(get_state)) -> ServiceState:
    if not state.ready:
        raise HTTPException(
            503, "the index is not loaded yet" if state.load_error is None else load_error_message(state)
        )
    return state


async def get_settings(state: ServiceState = Depends(get_state)) -> Settings:
    return state.settings


def _presented_key(request: Request) -> bytes:
    """The bearer token of the request as bytes; 401 without an Authorization header, 403 with another scheme."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        raise HTTPException(401, "missing Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise HTTPException(403, "wrong API key: send Authorization: Bearer <key>")
    # Header values arrive as latin-1 text: encoding them back gives the bytes the client sent (a key typed in UTF-8
    # matches its UTF-8 bytes), and comparing bytes never raises, whatever they are.
    return token.strip().encode("latin-1", errors="replace")


def _matches(token: bytes, *keys: str | None) -> bool:
    found = False
    for key in keys:
        if key:  # compare against every key, so the time taken does not say which one matched
            found |= hmac.compare_digest(token, key.encode("utf-8"))
    return found


async def require_api_key(
    request: Request, settings: Settings = Depends(get_settings), _: object = Security(bearer)
) -> None:
    """The write policy: every route that changes the index depends on this."""
    if not settings.api_key:
        if settings.allow_unauthenticated_writes or settings.binds_loopback:
            return
        raise HTTPException(
            403,
            f"writes are disabled: the server listens on {settings.host} without an API key. "
            "Set VIDRET_API_KEY (vidret serve --api-key) and send Authorization: Bearer <key>, "
            "or set VIDRET_ALLOW_UNAUTHENTICATED_WRITES=1 to let anyone who can reach it write",
        )
    if not _matches(_presented_key(request), settings.api_key):
        raise HTTPException(403, "wrong API key")


async def require_read_key(
    request: Request, settings: Settings = Depends(get_settings), _: object = Security(bearer)
) -> None:
    """The read policy: open unless VIDRET_READ_API_KEY is set; then it or the write key is needed."""
    if not settings.read_api_key:
        return
    if not _matches(_presented_key(request), settings.read_api_key, settings.api_key):
        raise HTTPException(403, "wrong API key")


# An absolute POSIX path, quoted ('/a b/c') or bare (/a/b/c), not part of a URL or a relative path. A bare path's
# folders may hold spaces (/srv/my videos/a.mp4); its last part may not (that is where the message goes on).
_QUOTED_PATH = re.compile(r"""(['"])(/[^'"\n]*)\1""")
_BARE_PATH = re.compile(r"""(?<![\w.~:/-])/(?:[^/\n'"<>|:,;()\[\]]+/)*[^\s/'"<>|:,;()\[\]]*""")


def _name(path: str) -> str:
    return os.path.basename(path.rstrip("/")) or "/"


def redact_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by its last component (the file or folder name)."""
    text = _QUOTED_PATH.sub(lambda m: f"{m[1]}{_name(m[2])}{m[1]}", text)
    return _BARE_PATH.sub(lambda m: _name(m[0]), text)
