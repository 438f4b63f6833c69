"""Add, list, look up, delete videos, and their thumbnails."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from functools import partial
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from indexing.index import DuplicateIdError, UnknownIdError
from service.deps import ready_state, require_api_key
from service.schemas import VideoInfo, VideoList
from service.state import ServiceState
from service.uploads import embed_upload, require_model, save_upload

router = APIRouter(prefix="/v1/videos", tags=["videos"])
ID_PATTERN = re.compile(r"^[\w.:@/+-]{1,200}$")


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


def _info(state: ServiceState, meta) -> VideoInfo:  # noqa: ANN001 - VideoMeta
    return VideoInfo(**{**meta.to_json(), "path": public_path(state, meta.path)})


def _stored_name(vid: str, suffix: str) -> str:
    """A new file name for an added video: the id's hash and a readable form of it, then a random part, so two adds
    of one id never write (or clean up) the same file."""
    safe = re.sub(r"[^\w.-]", "_", vid)[:60]
    return f"{hashlib.sha1(vid.encode()).hexdigest()[:12]}_{safe}_{secrets.token_hex(8)}{suffix}"


@router.get("", response_model=VideoList)
def list_videos(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                state: ServiceState = Depends(ready_state)) -> VideoList:
    ids = state.index.ids()
    metas = [state.index.get(i) for i in ids[offset:offset + limit]]
    return VideoList(videos=[_info(state, m) for m in metas if m is not None], total=len(ids))


@router.post("", status_code=201, response_model=VideoInfo,
             responses={401: {}, 403: {}, 409: {}, 413: {}, 415: {}, 422: {}, 503: {}},
             dependencies=[Depends(require_api_key)])
async def add_video(file: UploadFile = File(...), id: str = Form(...), label: str = Form(""),
                    camera: str = Form(""), state: ServiceState = Depends(ready_state)) -> VideoInfo:
    require_model(state)
    if not ID_PATTERN.match(id):
        raise HTTPException(422, "id must be 1-200 characters of letters, digits and . _ : @ / + -")
    if state.index.get(id) is not None:
        raise HTTPException(409, f"id {id!r} already exists")
    folder = _stored_folder(state)
    folder.mkdir(exist_ok=True)
    tmp = await save_upload(file, state.settings, folder)
    try:
        vec = await run_in_threadpool(embed_upload, state, str(tmp))
        # this add's own file: a concurrent add of the same id stores (and, losing, deletes) a different one
        final = folder / _stored_name(id, tmp.suffix)
        os.replace(tmp, final)
        with open(final, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            await run_in_threadpool(state.index.add, [id], vec[None, :], [label], [camera], [str(final)])
        except DuplicateIdError:  # another add of this id won: remove this add's file, never the winner's
            final.unlink(missing_ok=True)
            raise HTTPException(409, f"id {id!r} already exists") from None
    finally:
        tmp.unlink(missing_ok=True)
    await run_in_threadpool(state.note_write)
    return _info(state, state.index.get(id))


@router.get("/{video_id:path}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {}, 503: {}})
async def thumbnail(video_id: str, state: ServiceState = Depends(ready_state)) -> Response:
    from training.data.video import VideoDecodeError, middle_frame_jpeg

    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    if not meta.path or not Path(meta.path).exists():
        raise HTTPException(404, f"the video file of {video_id!r} is not available")
    # an added video was an upload: read it as a video container only, whatever its name
    stored = _is_stored(state, meta.path)
    try:
        data = await run_in_threadpool(partial(middle_frame_jpeg, meta.path, video_only=stored, label="the video"))
    except VideoDecodeError as exc:  # its reason names no path
        raise HTTPException(404, f"the video file of {video_id!r} cannot be decoded: {exc.reason}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get("/{video_id:path}", response_model=VideoInfo, responses={404: {}, 503: {}})
def get_video(video_id: str, state: ServiceState = Depends(ready_state)) -> VideoInfo:
    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    return _info(state, meta)


@router.delete("/{video_id:path}", status_code=204, response_class=Response,
               responses={401: {}, 403: {}, 404: {}, 503: {}}, dependencies=[Depends(require_api_key)])
async def delete_video(video_id: str, state: ServiceState = Depends(ready_state)) -> Response:
    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    try:
        await run_in_threadpool(state.index.remove, [video_id])
    except UnknownIdError:
        raise HTTPException(404, f"unknown video id {video_id!r}") from None
    if _is_stored(state, meta.path):
        Path(meta.path).unlink(missing_ok=True)
    await run_in_threadpool(state.note_write)
    return Response(status_code=204)
