"""Dependencies shared by the routers: the state, readiness, auth, the declared upload size. They never block,
so they are ``async``: FastAPI runs them on the event loop instead of handing each to a worker thread.

Access policy (decided in ``service/policy.py``; the auth dependencies below and ``service/guard.py`` call it):

* writes (adding, deleting videos: every route that depends on :func:`require_api_key`) follow the write policy of
  ``service/policy.py`` (the key, or keyless only on a server that listens on loopback alone);
* reads (``/v1/...``, attached to the routers in ``create_app``) need ``Bearer <VIDRET_READ_API_KEY>`` or the write
  key when a read key is set, and are open otherwise.
"""

from __future__ import annotations

import os
import re

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPBearer

from service.policy import check_metrics, check_read, check_write
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


async def require_api_key(
    request: Request, settings: Settings = Depends(get_settings), _: object = Security(bearer)
) -> None:
    """The write policy (``service/policy.py``): every route that changes the index depends on this."""
    check_write(settings, request.scope.get("server"), request.headers)


async def require_read_key(
    request: Request, settings: Settings = Depends(get_settings), _: object = Security(bearer)
) -> None:
    """The read policy: open unless VIDRET_READ_API_KEY is set; then it or the write key is needed."""
    check_read(settings, request.headers)


async def require_metrics_key(
    request: Request, settings: Settings = Depends(get_settings), _: object = Security(bearer)
) -> None:
    """/metrics: VIDRET_METRICS_API_KEY (or the write key) when set, else the read policy."""
    check_metrics(settings, request.headers)


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
