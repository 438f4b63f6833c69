"""Uploaded videos: stored to a temporary file under the size limit, typed by their bytes, decoded and embedded.

An upload is untrusted input. Its container type comes from its first bytes (``training.data.video.sniff_container``),
never from the client's file name; it is stored under that type's extension and decoded with container demuxers
only (``read_video_clip``), never as a frame folder or frame list, and no error names a server path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from fastapi import HTTPException, UploadFile

from service.settings import Settings
from service.state import ServiceState
from training.data.containers import CONTAINER_NAMES, SNIFF_BYTES, sniff_container

UPLOAD_CHUNK = 1 << 20
UPLOAD_LABEL = "the upload"  # how errors name an upload (never its temporary path)


def not_a_video() -> HTTPException:
    return HTTPException(415, f"the upload is not a video file (supported containers: {CONTAINER_NAMES})")


async def save_upload(file: UploadFile, settings: Settings, folder: Path | None = None) -> Path:
    """Copy an upload to a temporary file named after the container type its bytes show (the client's file name
    plays no part), enforcing the size limit; 415 when it is no supported video container."""
    if file is None or not file.filename:
        raise HTTPException(422, "missing multipart field 'file'")
    limit = settings.max_upload_mb * 2**20
    head = b""
    while len(head) < SNIFF_BYTES and (chunk := await file.read(SNIFF_BYTES - len(head))):
        head += chunk
    suffix = sniff_container(head)
    if suffix is None:
        raise not_a_video()
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    size = len(head)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            while chunk := await file.read(UPLOAD_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload larger than VIDRET_MAX_UPLOAD_MB={settings.max_upload_mb:g}")
                out.write(chunk)
        if size > limit:
            raise HTTPException(413, f"upload larger than VIDRET_MAX_UPLOAD_MB={settings.max_upload_mb:g}")
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def check_declared_shape(path: str, settings: Settings) -> None:
    """413 when the frame size or the frame count that the upload's container declares is past the limits
    (``VIDRET_MAX_FRAME_PIXELS``, ``VIDRET_MAX_FRAMES``); ``VideoDecodeError`` when its headers cannot be read."""
    from training.data.sources import declared_shape

    n, h, w = declared_shape(path, label=UPLOAD_LABEL)
    if h * w > settings.max_frame_pixels:
        raise HTTPException(
            413,
            f"the video's frames are {w}x{h} ({h * w} pixels), more than "
            f"VIDRET_MAX_FRAME_PIXELS={settings.max_frame_pixels}",
        )
    if n > settings.max_frames:
        raise HTTPException(413, f"the video declares {n} frames, more than VIDRET_MAX_FRAMES={settings.max_frames}")


def embed_upload(state: ServiceState, path: str) -> np.ndarray:
    """Decode (within the frame limit) and embed an uploaded video with the checkpoint's eval transform."""
    if getattr(state.model, "runtime", "torch") == "onnx":
        return _embed_upload_onnx(state, path)
    from training.data.video import VideoDecodeError, count_video_frames, read_video_clip

    try:
        check_declared_shape(path, state.settings)  # before anything is decoded: a small file can hold huge frames
        n = count_video_frames(path, label=UPLOAD_LABEL)
        if n > state.settings.max_frames:
            raise HTTPException(
                413, f"the video has {n} frames, more than VIDRET_MAX_FRAMES={state.settings.max_frames}"
            )
        clip, _ = read_video_clip(path, state.model.spec, train=False, label=UPLOAD_LABEL)
    except VideoDecodeError as exc:
        raise HTTPException(415, f"the upload cannot be decoded as a video: {exc.reason}") from None
    return state.batcher.submit(clip)


def _embed_upload_onnx(state: ServiceState, path: str) -> np.ndarray:
    """``embed_upload`` for an ONNX model: numpy decoding and preprocessing (training/data/npclip.py), no torch."""
    from training.data.npclip import ClipDecodeError, video_shape

    try:
        check_declared_shape(path, state.settings)  # before anything is decoded, as on a torch server
        n = video_shape(path, label=UPLOAD_LABEL)[0]
        if n > state.settings.max_frames:
            raise HTTPException(
                413, f"the video has {n} frames, more than VIDRET_MAX_FRAMES={state.settings.max_frames}"
            )
        clip = state.model.read_clip(path, label=UPLOAD_LABEL)
    except ClipDecodeError as exc:
        raise HTTPException(415, f"the upload cannot be decoded as a video: {exc.reason}") from None
    return state.batcher.submit(clip)


def require_model(state: ServiceState) -> None:
    if state.model is None:
        raise HTTPException(409, "no checkpoint is loaded: start the server with --checkpoint to embed uploads")
