"""/v1/index and the searches: by id, by embedding, batched, by uploaded video."""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.deps import ready_state
from service.schemas import (
    K_MAX,
    BatchSearchRequest,
    BatchSearchResponse,
    Hit,
    IndexInfo,
    ModelInfo,
    Query,
    SearchFilter,
    SearchRequest,
    SearchResponse,
)
from service.state import ServiceState
from service.uploads import embed_upload, require_model, save_upload

router = APIRouter(prefix="/v1", tags=["search"])


@router.get("/index", response_model=IndexInfo)
def index_info(state: ServiceState = Depends(ready_state)) -> IndexInfo:
    ix = state.index
    model = (
        ModelInfo(  # the file's name, no server path
            checkpoint=Path(state.settings.checkpoint).name,
            sha256=state.model.sha256,
            runtime=getattr(state.model, "runtime", "torch"),
        )
        if state.model
        else None
    )
    return IndexInfo(count=ix.count, dim=ix.dim, type=ix.type, metric=ix.metric, model=model, created=ix.created)


def check_k(state: ServiceState, k: int) -> None:
    if not 1 <= k <= state.settings.max_k:
        raise HTTPException(422, f"k must be between 1 and VIDRET_MAX_K={state.settings.max_k}, got {k}")


def query_vector(state: ServiceState, q: Query) -> tuple[np.ndarray, str | None]:
    """The query's vector and the id to exclude from its results (itself, when searching by id)."""
    if q.id is not None:
        v = state.index.vector(q.id)
        if v is None:
            raise HTTPException(404, f"unknown video id {q.id!r}")
        return v, q.id
    with np.errstate(over="ignore"):  # values past float32's range become inf, refused below
        v = np.asarray(q.embedding, dtype=np.float32)
    if v.shape != (state.index.dim,):
        raise HTTPException(422, f"embedding has {v.shape[0]} values, the index has dimension {state.index.dim}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(v).all() or norm == 0.0:
        raise HTTPException(422, "embedding must be finite and non-zero")
    return (v / norm if state.index.metric == "cosine" else v), None


def hits_json(hits: list) -> list[Hit]:
    return [Hit(id=h.id, score=h.score, label=h.label, camera=h.camera) for h in hits]


def run_search(
    state: ServiceState, queries: list[Query], k: int, exclude_self: bool, flt: SearchFilter | None = None
) -> list[list[Hit]]:
    vecs, excl = zip(*(query_vector(state, q) for q in queries), strict=True)
    results = state.search(
        np.stack(vecs), k, exclude_ids=list(excl) if exclude_self else None, filter=flt.to_index() if flt else None
    )
    return [hits_json(r) for r in results]


def form_filter(value: str | None) -> SearchFilter | None:
    """The ``filter`` form field of an upload search: the JSON object that ``POST /v1/search`` takes."""
    if value is None or not value.strip():
        return None
    try:
        return SearchFilter.model_validate_json(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("filter", *err["loc"]))
        raise HTTPException(422, f"{where}: {err['msg']}") from None


@router.post("/search", response_model=SearchResponse, responses={404: {}, 422: {}, 503: {}})
async def search(req: SearchRequest, state: ServiceState = Depends(ready_state)) -> SearchResponse:
    check_k(state, req.k)
    t0 = time.perf_counter()
    results = await run_in_threadpool(run_search, state, [req], req.k, req.exclude_self, req.filter)
    return SearchResponse(results=results[0], took_ms=(time.perf_counter() - t0) * 1e3)


@router.post("/search/batch", response_model=BatchSearchResponse, responses={404: {}, 422: {}, 503: {}})
async def search_batch(req: BatchSearchRequest, state: ServiceState = Depends(ready_state)) -> BatchSearchResponse:
    check_k(state, req.k)
    if len(req.queries) > state.settings.max_batch:
        raise HTTPException(422, f"at most VIDRET_MAX_BATCH={state.settings.max_batch} queries per batch")
    t0 = time.perf_counter()
    results = await run_in_threadpool(run_search, state, req.queries, req.k, req.exclude_self, req.filter)
    return BatchSearchResponse(results=results, took_ms=(time.perf_counter() - t0) * 1e3)


@router.post("/search/video", response_model=SearchResponse, responses={409: {}, 413: {}, 415: {}, 422: {}, 503: {}})
async def search_video(
    file: UploadFile = File(...),
    k: int = Form(10, ge=1, le=K_MAX),
    filter: str | None = Form(
        None, max_length=16384, description='As POST /v1/search\'s filter, as JSON: {"label": .., "camera": ..}.'
    ),
    state: ServiceState = Depends(ready_state),
) -> SearchResponse:
    require_model(state)
    check_k(state, k)
    flt = form_filter(filter)
    t0 = time.perf_counter()
    path = await save_upload(file, state.settings)
    try:
        vec = await run_in_threadpool(embed_upload, state, str(path))
        hits = await run_in_threadpool(partial(state.search, vec[None, :], k, filter=flt.to_index() if flt else None))
    finally:
        os.unlink(path)
    return SearchResponse(results=hits_json(hits[0]), took_ms=(time.perf_counter() - t0) * 1e3)
