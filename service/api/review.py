"""What the web page's evaluation and review views need: each query's AP, and the label review (an audit, the
reviewers' decisions, the cleaned manifest). The store is ``service/review.py``."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.api.evaluate import check_evaluation, run_evaluation
from service.deps import ready_state, require_api_key
from service.review import AuditFormatError, AuditRow, ReviewStore, cleaned_manifest, compute_audit, parse_audit_csv
from service.schemas import (
    AuditImport,
    AuditInfo,
    DecisionInfo,
    DecisionRequest,
    EvaluateRequest,
    Hit,
    PerQueryResponse,
    QueryAP,
    ReviewItem,
    ReviewQueue,
)
from service.state import ServiceState

evaluation_router = APIRouter(prefix="/v1", tags=["evaluate"])
router = APIRouter(prefix="/v1/review", tags=["review"])
MAX_NEIGHBOURS = 20
UNKNOWN_CAMERAS = {"", "None", "nan"}  # as indexing.metrics reads cameras: these never match one another
_computing = threading.Lock()  # one server-side audit at a time (it decodes every indexed video)


# ---- per-query AP --------------------------------------------------------------------------------------------------
def _has_relevant(queries: list, gallery: list) -> list[bool]:
    """Whether each query (an indexed video) has a relevant item under the re-ID protocol (indexing/metrics.py):
    another video of its label, not from its own (known) camera. The queries without one are the 'skipped'."""
    total: dict[str, int] = {}
    per_camera: dict[tuple[str, str], int] = {}
    for m in gallery:
        total[m.label] = total.get(m.label, 0) + 1
        if m.camera not in UNKNOWN_CAMERAS:
            per_camera[m.label, m.camera] = per_camera.get((m.label, m.camera), 0) + 1
    out = []
    for q in queries:  # q is in the gallery: it is one of its own label's items, and of its camera's
        junk = per_camera.get((q.label, q.camera), 0) if q.camera not in UNKNOWN_CAMERAS else 1
        out.append(total.get(q.label, 0) - junk > 0)
    return out


def per_query_scores(state: ServiceState, req: EvaluateRequest) -> PerQueryResponse:
    """``POST /v1/evaluate``'s answer for the same body, plus each query's AP (same protocol, same code)."""
    metas, queries, res = run_evaluation(state, req)
    has = _has_relevant(queries, metas)
    if sum(has) != len(res.ap) or len(has) - sum(has) != res.skipped:  # the two readings of the protocol disagree
        raise RuntimeError(f"per-query AP: {sum(has)} queries with relevant items, {len(res.ap)} APs")
    aps = iter(res.ap.tolist())
    return PerQueryResponse(
        **res.to_json(),
        queries=[
            QueryAP(id=m.id, label=m.label, camera=m.camera, ap=next(aps) if h else None)
            for m, h in zip(queries, has, strict=True)
        ],
    )


@evaluation_router.post("/evaluate/queries", response_model=PerQueryResponse, responses={404: {}, 422: {}, 503: {}})
async def evaluate_queries(req: EvaluateRequest, state: ServiceState = Depends(ready_state)) -> PerQueryResponse:
    """The same evaluation as ``POST /v1/evaluate`` (same body, same limit), with each query's AP: the page's
    rank list shows one query's AP, and its evaluation view runs the queries in chunks (its progress) and lists the
    worst."""
    check_evaluation(state, req)
    return await run_in_threadpool(per_query_scores, state, req)


# ---- the label review ------------------------------------------------------------------------------------------
def review_store(state: ServiceState) -> ReviewStore:
    return ReviewStore(Path(state.settings.index))


def _store_audit(state: ServiceState, rows: list[AuditRow], source: str, counts: dict[str, int]) -> AuditImport:
    info = review_store(state).replace_audit(rows, source)
    return AuditImport(**info, **counts)


@router.post(
    "/audit",
    status_code=201,
    response_model=AuditImport,
    dependencies=[Depends(require_api_key)],
    responses={401: {}, 403: {}, 413: {}, 422: {}, 503: {}},
)
async def import_audit(
    file: UploadFile = File(..., description="A `vidret audit` CSV: id,label,p_label,predicted,p_predicted,suspicion"),
    state: ServiceState = Depends(ready_state),
) -> AuditImport:
    """Import an audit (replaces the current one; decisions are kept). Rows naming no indexed video are counted in
    ``unknown_ids`` and left out."""
    data = await file.read()
    try:
        parsed = await run_in_threadpool(parse_audit_csv, data)
    except AuditFormatError as exc:
        raise HTTPException(422, f"audit CSV: {exc}") from None
    rows = [r for r in parsed if state.index.get(r.id) is not None]
    if not rows:
        raise HTTPException(422, f"audit CSV: none of its {len(parsed)} ids is an indexed video")
    return await run_in_threadpool(_store_audit, state, rows, "import", {"unknown_ids": len(parsed) - len(rows)})


def _compute(state: ServiceState) -> AuditImport:
    metas, _ = state.index.snapshot()
    rows, counts = compute_audit(state.model, metas)
    if not rows:
        raise HTTPException(
            409,
            "no indexed video could be audited: the checkpoint's classes must include its label "
            f"and its file must be available ({counts['unknown_label']} with another label, "
            f"{counts['missing_file']} without a file, {counts['undecodable']} undecodable)",
        )
    return _store_audit(state, rows, "computed", counts)


@router.post(
    "/audit/compute",
    status_code=201,
    response_model=AuditImport,
    dependencies=[Depends(require_api_key)],
    responses={401: {}, 403: {}, 409: {}, 503: {}},
)
async def compute(state: ServiceState = Depends(ready_state)) -> AuditImport:
    """Audit the indexed videos with the server's checkpoint (as ``vidret audit`` does for a manifest): every video
    whose label is a class of the checkpoint and whose file is available. 409 without a checkpoint, while another
    audit is computed, or when no video can be audited. It decodes every such video: minutes for large indexes."""
    if state.model is None:
        raise HTTPException(
            409,
            "the server has no checkpoint (vidret serve --checkpoint): import an audit made by `vidret audit` instead",
        )
    if getattr(state.model, "runtime", "torch") == "onnx":
        raise HTTPException(
            409, "an ONNX export has no classifier to audit with: import an audit made by `vidret audit`"
        )
    if not _computing.acquire(blocking=False):
        raise HTTPException(409, "an audit is already being computed")
    try:
        return await run_in_threadpool(_compute, state)
    finally:
        _computing.release()


def _queue(state: ServiceState, offset: int, limit: int, undecided: bool, neighbours: int) -> ReviewQueue:
    store = review_store(state)
    decisions = store.decisions()
    audited = [(r, m) for r in store.audit_rows() if (m := state.index.get(r.id)) is not None]
    decided = sum(1 for r, _ in audited if r.id in decisions)
    if undecided:
        audited = [(r, m) for r, m in audited if r.id not in decisions]
    page = audited[offset : offset + limit]
    near: list[list] = [[] for _ in page]
    if page and neighbours:
        vecs = [state.index.vector(r.id) for r, _ in page]
        have = [i for i, v in enumerate(vecs) if v is not None]
        if have:
            found = state.search(
                np.stack([vecs[i] for i in have]), neighbours, exclude_ids=[page[i][0].id for i in have]
            )
            for i, hits in zip(have, found, strict=True):
                near[i] = hits
    items = []
    for (r, m), hits in zip(page, near, strict=True):
        d = decisions.get(r.id)
        items.append(
            ReviewItem(
                id=r.id,
                label=m.label,
                camera=m.camera,
                audit_label=r.label,
                p_label=r.p_label,
                predicted=r.predicted,
                p_predicted=r.p_predicted,
                suspicion=r.suspicion,
                decision=DecisionInfo(**d.to_json()) if d else None,
                neighbours=[Hit(id=h.id, score=h.score, label=h.label, camera=h.camera) for h in hits],
            )
        )
    info = store.audit_info()
    return ReviewQueue(
        items=items, total=len(audited), offset=offset, decided=decided, audit=AuditInfo(**info) if info else None
    )


@router.get("/queue", response_model=ReviewQueue, responses={503: {}})
async def queue(
    offset: int = Query(0, ge=0),
    limit: int = Query(20, ge=1, le=200),
    undecided: bool = Query(False, description="Only the videos without a decision."),
    neighbours: int = Query(5, ge=0, le=MAX_NEIGHBOURS, description="Nearest neighbours per item."),
    state: ServiceState = Depends(ready_state),
) -> ReviewQueue:
    """The audited videos that are in the index, most suspect first, with their decisions and nearest neighbours."""
    return await run_in_threadpool(_queue, state, offset, limit, undecided, neighbours)


@router.put(
    "/decisions/{video_id:path}",
    response_model=DecisionInfo,
    dependencies=[Depends(require_api_key)],
    responses={401: {}, 403: {}, 404: {}, 422: {}, 503: {}},
)
async def decide(video_id: str, req: DecisionRequest, state: ServiceState = Depends(ready_state)) -> DecisionInfo:
    """Keep, relabel (``label`` required) or drop an indexed video; replaces its previous decision. Committed
    (durable) before the answer."""
    if state.index.get(video_id) is None:
        raise HTTPException(404, f"unknown video id {video_id!r}")
    try:
        d = await run_in_threadpool(review_store(state).decide, video_id, req.action, req.label)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return DecisionInfo(**d.to_json())


def _export(state: ServiceState) -> str:
    metas, _ = state.index.snapshot()
    return cleaned_manifest(metas, review_store(state).decisions(), Path(state.settings.index)).text


@router.get(
    "/export",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}, 503: {}},
    dependencies=[Depends(require_api_key)],
)
async def export(state: ServiceState = Depends(ready_state)) -> Response:
    """The cleaned manifest: every indexed video as ``path,label,id,camera`` with relabels applied and drops left
    out, for ``vidret train``. Paths of files inside the index folder are relative to it (``videos/<file>``); other
    paths are as stored, so that retraining finds them: the only answer that shows server paths, it needs the write
    policy (the API key, or a loopback server)."""
    text = await run_in_threadpool(_export, state)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="cleaned.csv"', "Cache-Control": "no-store"},
    )
