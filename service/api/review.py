"""The label review behind the web page's review view: an audit, the reviewers' decisions, the cleaned manifest.
The store is ``service/review.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.api.ids import path_id
from service.audit_jobs import JobRunning, audit_jobs
from service.deps import ready_state, require_api_key
from service.review import AuditFormatError, AuditRow, ReviewStore, cleaned_manifest, parse_audit_csv
from service.schemas import (
    OFFSET_MAX,
    AuditImport,
    AuditInfo,
    AuditJobInfo,
    DecisionInfo,
    DecisionRequest,
    Hit,
    ReviewItem,
    ReviewQueue,
)
from service.state import ServiceState

router = APIRouter(prefix="/v1/review", tags=["review"])
MAX_NEIGHBOURS = 20
UNKNOWN_CAMERAS = {"", "None", "nan"}  # as indexing.metrics reads cameras: these never match one another


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
    return await run_in_threadpool(_import_audit, state, data)


def _import_audit(state: ServiceState, data: bytes) -> AuditImport:
    """Parse, keep the rows naming indexed videos (one lookup each: a Milvus query, so in a worker thread, never on
    the event loop) and store."""
    try:
        parsed = parse_audit_csv(data)
    except AuditFormatError as exc:
        raise HTTPException(422, f"audit CSV: {exc}") from None
    rows = [r for r in parsed if state.index.get(r.id) is not None]
    if not rows:
        raise HTTPException(422, f"audit CSV: none of its {len(parsed)} ids is an indexed video")
    return _store_audit(state, rows, "import", {"unknown_ids": len(parsed) - len(rows)})


@router.post(
    "/audit/compute",
    status_code=202,
    response_model=AuditJobInfo,
    dependencies=[Depends(require_api_key)],
    responses={401: {}, 403: {}, 409: {}, 503: {}},
)
async def compute(response: Response, state: ServiceState = Depends(ready_state)) -> AuditJobInfo:
    """Start auditing the indexed videos with the server's checkpoint (as ``vidret audit`` does for a manifest):
    every video whose label is a class of the checkpoint and whose file is available. It decodes every such video
    (minutes for large indexes), so it runs as a background job: 202 with the job (``Location``: its URL), whose
    ``GET`` gives the progress and then the result, and whose ``DELETE`` cancels it. 409 without a checkpoint, or
    while another audit job runs (``Location``: that job's URL)."""
    if state.model is None:
        raise HTTPException(
            409,
            "the server has no checkpoint (vidret serve --checkpoint): import an audit made by `vidret audit` instead",
        )
    if getattr(state.model, "runtime", "torch") == "onnx":
        raise HTTPException(
            409, "an ONNX export has no classifier to audit with: import an audit made by `vidret audit`"
        )
    try:
        job = audit_jobs(state).start(state)
    except JobRunning as exc:
        raise HTTPException(
            409,
            f"an audit is already being computed: GET {exc.job.url} for its progress, DELETE it to cancel",
            headers={"Location": exc.job.url},
        ) from None
    response.headers["Location"] = job.url
    return AuditJobInfo(**job.to_json())


@router.get("/audit/jobs", response_model=list[AuditJobInfo], responses={503: {}})
def list_audit_jobs(state: ServiceState = Depends(ready_state)) -> list[AuditJobInfo]:
    """The server's recent audit jobs, newest first (a running one, if any, is the first)."""
    return [AuditJobInfo(**j.to_json()) for j in audit_jobs(state).list()]


def _job(state: ServiceState, job_id: str):
    job = audit_jobs(state).get(job_id)
    if job is None:
        raise HTTPException(404, f"unknown audit job {job_id[:40]!r} (jobs are kept in memory until a restart)")
    return job


@router.get("/audit/jobs/{job_id}", response_model=AuditJobInfo, responses={404: {}, 503: {}})
def audit_job(job_id: str, state: ServiceState = Depends(ready_state)) -> AuditJobInfo:
    """A job's state (running, cancelling, done, failed, cancelled), its progress (``done`` of ``total`` videos)
    and, when done, its result (as an import's answer)."""
    return AuditJobInfo(**_job(state, job_id).to_json())


@router.delete(
    "/audit/jobs/{job_id}",
    status_code=202,
    response_model=AuditJobInfo,
    dependencies=[Depends(require_api_key)],
    responses={401: {}, 403: {}, 404: {}, 409: {}, 503: {}},
)
def cancel_audit_job(job_id: str, state: ServiceState = Depends(ready_state)) -> AuditJobInfo:
    """Cancel a running job: it stops before its next chunk of videos and stores nothing (state ``cancelling``,
    then ``cancelled``). 409 when it has already finished."""
    job = _job(state, job_id)
    if not audit_jobs(state).cancel(job):
        raise HTTPException(409, f"the audit job {job.id} has already finished ({job.state})")
    return AuditJobInfo(**job.to_json())


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
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
    limit: int = Query(20, ge=1, le=200),
    undecided: bool = Query(False, description="Only the videos without a decision."),
    neighbours: int = Query(5, ge=0, le=MAX_NEIGHBOURS, description="Nearest neighbours per item."),
    state: ServiceState = Depends(ready_state),
) -> ReviewQueue:
    """The audited videos that are in the index, most suspect first, with their decisions and nearest neighbours."""
    return await run_in_threadpool(_queue, state, offset, limit, undecided, neighbours)


@router.put(
    "/decisions/{video_id:vid}",  # service/api/ids.py: the id convertor
    response_model=DecisionInfo,
    dependencies=[Depends(require_api_key)],
    responses={401: {}, 403: {}, 404: {}, 422: {}, 503: {}},
)
async def decide(video_id: str, req: DecisionRequest, state: ServiceState = Depends(ready_state)) -> DecisionInfo:
    """Keep, relabel (``label`` required) or drop an indexed video; replaces its previous decision. Committed
    (durable) before the answer."""
    video_id = path_id(video_id)
    try:
        d = await run_in_threadpool(_decide, state, video_id, req.action, req.label)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return DecisionInfo(**d.to_json())


def _decide(state: ServiceState, vid: str, action: str, label: str | None):
    """Store the decision only while the video exists: under the id's lock, which a delete holds while it removes
    the video and its review (service/integrity.py), so no decision outlives its video."""
    with state.id_locks.hold(vid):
        if state.index.get(vid) is None:
            raise HTTPException(404, f"unknown video id {vid!r}")
        return review_store(state).decide(vid, action, label)


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
