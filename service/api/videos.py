"""Add, list, look up, delete videos, and their thumbnails."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from indexing.index import DuplicateIdError, UnknownIdError
from service.api.search import embed_upload, require_model
from service.deps import check_content_length, ready_state, require_api_key, save_upload
from service.schemas import VideoInfo, VideoList
from service.state import ServiceState

router = APIRouter(prefix="/v1/videos", tags=["videos"])
ID_PATTERN = re.compile(r"^[\w.:@/+-]{1,200}$")


def _info(meta) -> VideoInfo:  # noqa: ANN001 - VideoMeta
    return VideoInfo(**meta.to_json())


def _stored_name(vid: str, suffix: str) -> str:
    safe = re.sub(r"[^\w.-]", "_", vid)[:60]
    return f"{hashlib.sha1(vid.encode()).hexdigest()[:12]}_{safe}{suffix}"


@router.get("", response_model=VideoList)
def list_videos(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                state: ServiceState = Depends(ready_state)) -> VideoList:
    ids = state.index.ids()
    metas = [state.index.get(i) for i in ids[offset:offset + limit]]
    return VideoList(videos=[_info(m) for m in metas if m is not None], total=len(ids))


@router.post("", status_code=201, response_model=VideoInfo,
             responses={401: {}, 403: {}, 409: {}, 413: {}, 415: {}, 422: {}, 503: {}},
             dependencies=[Depends(require_api_key), Depends(check_content_length)])
async def add_video(file: UploadFile = File(...), id: str = Form(...), label: str = Form(""),
                    camera: str = Form(""), state: ServiceState = Depends(ready_state)) -> VideoInfo:
    require_model(state)
    if not ID_PATTERN.match(id):
        raise HTTPException(422, "id must be 1-200 characters of letters, digits and . _ : @ / + -")
    if state.index.get(id) is not None:
        raise HTTPException(409, f"id {id!r} already exists")
    folder = Path(state.settings.index) / "videos"
    folder.mkdir(exist_ok=True)
    tmp = await save_upload(file, state.settings, folder)
    try:
        vec = await run_in_threadpool(embed_upload, state, str(tmp))
        final = folder / _stored_name(id, tmp.suffix)
        os.replace(tmp, final)
        with open(final, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            await run_in_threadpool(state.index.add, [id], vec[None, :], [label], [camera], [str(final.resolve())])
        except DuplicateIdError:
            final.unlink(missing_ok=True)
            raise HTTPException(409, f"id {id!r} already exists") from None
    finally:
        tmp.unlink(missing_ok=True)
    await run_in_threadpool(state.note_write)
    return _info(state.index.get(id))


@router.get("/{video_id:path}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {}, 503: {}})
async def thumbnail(video_id: str, state: ServiceState = Depends(ready_state)) -> Response:
    from indexing.errors import UserError
    from training.video import middle_frame_jpeg

    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    if not meta.path or not Path(meta.path).exists():
        raise HTTPException(404, f"the video file of {video_id!r} is not available")
    try:
        data = await run_in_threadpool(middle_frame_jpeg, meta.path)
    except UserError as exc:
        raise HTTPException(404, f"the video file of {video_id!r} cannot be decoded: {exc}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get("/{video_id:path}", response_model=VideoInfo, responses={404: {}, 503: {}})
def get_video(video_id: str, state: ServiceState = Depends(ready_state)) -> VideoInfo:
    meta = state.index.get(video_id)
    if meta is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    return _info(meta)


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
    stored = Path(state.settings.index).resolve() / "videos"
    if meta.path and Path(meta.path).resolve().parent == stored:
        Path(meta.path).unlink(missing_ok=True)
    await run_in_threadpool(state.note_write)
    return Response(status_code=204)
