"""Dependencies shared by the routers: the state, readiness, auth, upload limits. They never block, so they are
``async``: FastAPI runs them on the event loop instead of handing each to a worker thread."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from fastapi import Depends, HTTPException, Request, UploadFile

from service.settings import Settings
from service.state import ServiceState

VIDEO_SIGNATURES = (  # (offset, bytes): mp4/mov/m4v (ISO BMFF), mkv/webm (EBML), avi (RIFF AVI), mpeg-ps/ts
    (4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (8, b"AVI "), (0, b"\x00\x00\x01\xba"), (0, b"\x47"),
)
UPLOAD_CHUNK = 1 << 20


async def get_state(request: Request) -> ServiceState:
    return request.app.state.vidret


async def ready_state(state: ServiceState = Depends(get_state)) -> ServiceState:
    if not state.ready:
        raise HTTPException(503, "the index is not loaded yet" if state.load_error is None
                            else f"the index failed to load: {state.load_error}")
    return state


async def get_settings(state: ServiceState = Depends(get_state)) -> Settings:
    return state.settings


async def require_api_key(request: Request, settings: Settings = Depends(get_settings)) -> None:
    if not settings.api_key:
        return
    header = request.headers.get("authorization", "")
    if not header:
        raise HTTPException(401, "missing Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), settings.api_key):
        raise HTTPException(403, "wrong API key")


async def check_content_length(request: Request, settings: Settings = Depends(get_settings)) -> None:
    """Refuse an oversized upload from its declared length, before the body is parsed."""
    length = request.headers.get("content-length")
    limit = settings.max_upload_mb * 2**20
    if length and length.isdigit() and int(length) > limit + 64 * 1024:  # multipart framing allowance
        raise HTTPException(413, f"upload larger than VIDRET_MAX_UPLOAD_MB={settings.max_upload_mb:g}")


async def save_upload(file: UploadFile, settings: Settings, folder: Path | None = None) -> Path:
    """Copy an upload to a temporary file, enforcing the size limit and checking it is a video container."""
    if file is None or not file.filename:
        raise HTTPException(422, "missing multipart field 'file'")
    limit = settings.max_upload_mb * 2**20
    suffix = Path(file.filename).suffix.lower()[:8] or ".bin"
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await file.read(UPLOAD_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload larger than VIDRET_MAX_UPLOAD_MB={settings.max_upload_mb:g}")
                out.write(chunk)
        with open(name, "rb") as fh:
            head = fh.read(16)
        if size == 0 or not any(head[o:o + len(sig)] == sig for o, sig in VIDEO_SIGNATURES):
            raise HTTPException(415, f"{file.filename}: not a video file (mp4, mov, mkv, webm, avi, mpeg)")
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)
