"""Add, list, look up, delete videos, and their thumbnails."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from functools import partial
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from indexing.backend import DuplicateIdError, UnknownIdError
from indexing.ids import InvalidIdError, check_text, normalize_id
from indexing.store import VideoMeta
from service.api.ids import path_id
from service.deps import ready_state, require_api_key
from service.integrity import forget_review
from service.review import ReviewStore
from service.schemas import OFFSET_MAX, VideoInfo, VideoList
from service.state import ServiceState
from service.thumbnails import thumbnail_cache
from service.uploads import embed_upload, require_model, save_upload

router = APIRouter(prefix="/v1/videos", tags=["videos"])


def _stored_folder(state: ServiceState) -> Path:
    """Where added videos are kept: the index folder's videos/."""
    return Path(state.settings.index).resolve() / "videos"


def _is_stored(state: ServiceState, path: str) -> bool:
    return bool(path) and Path(path).resolve().parent == _stored_folder(state)


def public_path(state: ServiceState, path: str) -> str:
    """A video's path as responses show it: relative to the index folder for added videos (videos/<file>), the
    file name alone for any other; never an absolute server path."""
    if not path:
        return ""
    if _is_stored(state, path):
        return f"videos/{Path(path).name}"
    return Path(path).name


def _info(state: ServiceState, meta) -> VideoInfo:
    return VideoInfo(**{**meta.to_json(), "path": public_path(state, meta.path)})


def _stored_name(vid: str, suffix: str) -> str:
    """A new file name for an added video: the id's hash and a readable form of it, then a random part, so two adds
    of one id never write (or clean up) the same file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", vid)[:60]  # ASCII: the name stays far below 255 bytes
    return f"{hashlib.sha1(vid.encode()).hexdigest()[:12]}_{safe}_{secrets.token_hex(8)}{suffix}"


def _matching(state: ServiceState, q: str) -> list[VideoMeta]:
    """The videos whose id or label contains ``q`` (case-insensitive): those where one of them starts with
    it first, then the others, each in index order."""
    needle = q.casefold()
    first, then = [], []
    for meta in state.index.page():  # every entry, in index order, with its label: one read, not one per id
        vid_cf, label_cf = meta.id.casefold(), meta.label.casefold()
        if vid_cf.startswith(needle) or label_cf.startswith(needle):
            first.append(meta)
        elif needle in vid_cf or needle in label_cf:
            then.append(meta)
    return first + then


@router.get("", response_model=VideoList)
def list_videos(
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
    limit: int = Query(100, ge=1, le=1000),
    q: str | None = Query(
        None,
        max_length=200,
        description="Only videos whose id or label contains "
        "this (case-insensitive), those starting with it first; total counts them.",
    ),
    state: ServiceState = Depends(ready_state),
) -> VideoList:
    if q:
        found = _matching(state, q)
        metas, total = found[offset : offset + limit], len(found)
    else:  # the page alone: the index counts and reads only the page's neighbourhood (Milvus)
        metas, total = state.index.page(offset, limit), state.index.count
    return VideoList(videos=[_info(state, m) for m in metas], total=total)


@router.post(
    "",
    status_code=201,
    response_model=VideoInfo,
    responses={401: {}, 403: {}, 409: {}, 413: {}, 415: {}, 422: {}, 503: {}},
    dependencies=[Depends(require_api_key)],
)
async def add_video(
    file: UploadFile = File(...),
    id: str = Form(...),
    label: str = Form(""),
    camera: str = Form(""),
    state: ServiceState = Depends(ready_state),
) -> VideoInfo:
    require_model(state)
    if state.index.read_only:  # before the upload is embedded and stored
        raise HTTPException(409, "the index is served memory-mapped (read-only): serve it without --mmap to add")
    try:  # indexing/ids.py: the one rule of every backend, checked before the upload is read
        id = normalize_id(id)
        check_text(label, "label")
        check_text(camera, "camera")
    except InvalidIdError as exc:
        raise HTTPException(422, str(exc)) from None
    if state.index.get(id) is not None:
        raise HTTPException(409, f"id {id!r} already exists")
    folder = _stored_folder(state)
    folder.mkdir(exist_ok=True)
    tmp = await save_upload(file, state.settings, folder)
    try:
        vec = await run_in_threadpool(embed_upload, state, str(tmp))
        # this add's own file: a concurrent add of the same id stores (and, losing, deletes) a different one
        meta = await run_in_threadpool(
            _commit_add, state, id, vec, label, camera, tmp, folder / _stored_name(id, tmp.suffix)
        )
    finally:
        tmp.unlink(missing_ok=True)
    await run_in_threadpool(state.note_write)
    return _info(state, meta)


def _commit_add(state: ServiceState, vid: str, vec, label: str, camera: str, tmp: Path, final: Path) -> VideoMeta:
    """Store the upload as ``final`` and add its entry, under the id's lock (service/integrity.py): the entry
    answered is the one committed, never one a racing delete removed. When the index refuses the add (a duplicate,
    a value the backend cannot store, a full disk) the file is removed again: nothing is half-stored."""
    with state.id_locks.hold(vid):
        if vid in state.stale_reviews:  # the review of a deleted video of this id is still stored: not inherited
            ReviewStore(state.settings.index).forget(vid)
            state.stale_reviews.discard(vid)
        try:
            os.replace(tmp, final)
            with open(final, "rb") as fh:
                os.fsync(fh.fileno())
            state.index.add([vid], vec[None, :], [label], [camera], [str(final)])
        except BaseException as exc:
            committed = state.index.get(vid)
            if committed is None or committed.path != str(final):  # never the winner's file of a racing add
                final.unlink(missing_ok=True)
            if isinstance(exc, DuplicateIdError):
                raise HTTPException(409, f"id {vid!r} already exists") from None
            raise
        return state.index.get(vid)


@router.get(
    "/{video_id:vid}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 404: {}, 422: {}, 503: {}},
)
async def thumbnail(video_id: str, state: ServiceState = Depends(ready_state)) -> Response:
    video_id = path_id(video_id)
    from training.data import sources  # torch-free: thumbnails on an ONNX server too

    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    if not meta.path or not Path(meta.path).exists():
        raise HTTPException(404, f"the video file of {video_id!r} is not available")
    # an added video was an upload: read it as a video container only, whatever its name
    stored = _is_stored(state, meta.path)
    make = partial(sources.middle_frame_jpeg, meta.path, video_only=stored, label="the video")
    cache = thumbnail_cache(state)  # decoded once per file, not once per view
    try:
        data = await run_in_threadpool(lambda: cache.get_or_make(cache.key(meta.id, meta.path), make))
    except sources.VideoDecodeError as exc:  # its reason names no path
        raise HTTPException(404, f"the video file of {video_id!r} cannot be decoded: {exc.reason}") from None
    except OSError:  # deleted meanwhile
        raise HTTPException(404, f"the video file of {video_id!r} is not available") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".mpg": "video/mpeg",
    ".ts": "video/mp2t",
}  # by sniff_container's answer
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)
_DIGITS = 18  # longer numbers are past any file's end (and int() of huge digit strings is refused)
STREAM_CHUNK = 1 << 16


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range ``Range: bytes=a-b`` (or ``a-``, ``-n``) asks of a ``size``-byte file, as inclusive
    (first, last); None to send the whole file: no header, several ranges, or one the server cannot read (RFC
    9110 lets a server ignore those). 416 when the range lies past the end."""
    if header is None:
        return None
    m = _RANGE.fullmatch(header)
    if m is None or (not m[1] and not m[2]):
        return None
    unsatisfiable = HTTPException(
        416, f"range not satisfiable: the file has {size} bytes", headers={"Content-Range": f"bytes */{size}"}
    )
    if not m[1]:  # the last n bytes
        n = int(m[2]) if len(m[2]) <= _DIGITS else size
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    first = int(m[1]) if len(m[1]) <= _DIGITS else size
    last = (int(m[2]) if len(m[2]) <= _DIGITS else size) if m[2] else size - 1
    if m[2] and last < first:
        return None  # not a valid range: ignored
    if first >= size:
        raise unsatisfiable
    return first, min(last, size - 1)


def _stream(fh, first: int, length: int):
    try:
        fh.seek(first)
        while length > 0:
            chunk = fh.read(min(STREAM_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        fh.close()


@router.get(
    "/{video_id:vid}/video",
    response_class=Response,
    responses={
        200: {"content": {t: {} for t in VIDEO_TYPES.values()}, "description": "the whole file"},
        206: {"content": {t: {} for t in VIDEO_TYPES.values()}, "description": "the range asked"},
        404: {},
        416: {},
        422: {},
        503: {},
    },
)
async def video_file(
    video_id: str,
    range_header: str | None = Header(None, alias="Range", description="bytes=first-last, first- or -count: one range"),
    state: ServiceState = Depends(ready_state),
) -> Response:
    """The stored video file, for playback: ``Accept-Ranges: bytes``, 206 with one range, 416 past the end. Only
    the file the video's metadata names (an added video's copy in the index's videos/ folder, or the indexed
    file), and only if it is a video container."""
    from training.data.containers import sniff_file

    video_id = path_id(video_id)
    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    try:
        if not meta.path or not os.path.isfile(meta.path):
            raise FileNotFoundError
        kind = await run_in_threadpool(sniff_file, meta.path)
        fh = open(meta.path, "rb")  # closed by the stream, or below
    except OSError:
        raise HTTPException(404, f"the video file of {video_id!r} is not available") from None
    try:
        if kind not in VIDEO_TYPES:  # a frame folder or list, or not a video: nothing a browser plays
            raise HTTPException(404, f"the video of {video_id!r} is not stored as a video file")
        size = os.fstat(fh.fileno()).st_size
        span = byte_range(range_header, size)
    except BaseException:
        fh.close()
        raise
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}
    first, last = span if span is not None else (0, size - 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    return StreamingResponse(
        _stream(fh, first, last - first + 1),
        status_code=206 if span else 200,
        media_type=VIDEO_TYPES[kind],
        headers=headers,
    )


@router.get("/{video_id:vid}", response_model=VideoInfo, responses={404: {}, 422: {}, 503: {}})
def get_video(video_id: str, state: ServiceState = Depends(ready_state)) -> VideoInfo:
    video_id = path_id(video_id)
    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    return _info(state, meta)


@router.delete(
    "/{video_id:vid}",
    status_code=204,
    response_class=Response,
    responses={401: {}, 403: {}, 404: {}, 422: {}, 503: {}},
    dependencies=[Depends(require_api_key)],
)
async def delete_video(video_id: str, state: ServiceState = Depends(ready_state)) -> Response:
    video_id = path_id(video_id)
    await run_in_threadpool(_delete, state, video_id)
    await run_in_threadpool(state.note_write)
    return Response(status_code=204)


def _delete(state: ServiceState, vid: str) -> None:
    """Remove the entry, then its stored file and its review, under the id's lock: no decision or add of this id
    runs in between (a server killed half-way has the rest swept at its next start)."""
    with state.id_locks.hold(vid):
        meta = state.index.get(vid)
        if meta is None:
            raise HTTPException(404, f"unknown video id {vid!r}")
        try:
            state.index.remove([vid])
        except UnknownIdError:
            raise HTTPException(404, f"unknown video id {vid!r}") from None
        thumbnail_cache(state).forget(vid)
        if _is_stored(state, meta.path):
            Path(meta.path).unlink(missing_ok=True)
        forget_review(state, vid)  # its review goes with it
