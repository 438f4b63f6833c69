"""POST /v1/evaluate: mAP/CMC over the indexed gallery with the re-ID protocol and the stored labels; POST
/v1/evaluate/queries: the same, with each query's AP (the web page's evaluation view)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool

from indexing.store import VideoMeta
from service.deps import ready_state
from service.schemas import EvaluateRequest, EvaluateResponse, PerQueryResponse, QueryAP
from service.state import ServiceState

if TYPE_CHECKING:  # indexing.metrics (numpy only) is loaded when an evaluation runs
    from indexing.metrics import RetrievalScores

router = APIRouter(prefix="/v1", tags=["evaluate"])
UNKNOWN_CAMERAS = {"", "None", "nan"}  # as indexing.metrics reads cameras: these never match one another


def check_evaluation(state: ServiceState, req: EvaluateRequest) -> None:
    """Refuse an evaluation before any work: an empty index, or more queries than VIDRET_MAX_EVAL_QUERIES."""
    if state.index.count == 0:
        raise HTTPException(422, "the index is empty")
    limit = state.settings.max_eval_queries
    n = state.index.count if req.all else len(req.query_ids)
    if n > limit:  # each query ranks the whole gallery: bound the work one request can ask for
        raise HTTPException(
            422,
            f"this evaluation has {n} queries, more than VIDRET_MAX_EVAL_QUERIES={limit}: pass "
            f"at most {limit} query_ids{' instead of all: true' if req.all else ''}, or raise "
            "the setting",
        )


def run_evaluation(
    state: ServiceState, req: EvaluateRequest
) -> tuple[list[VideoMeta], list[VideoMeta], RetrievalScores]:
    """The indexed videos, the queries among them, and the retrieval result of those queries against all of them
    (docs/evaluation.md), with the stored labels and cameras."""
    from indexing.metrics import evaluate_retrieval

    metas, vecs = state.index.snapshot()
    pos = {m.id: i for i, m in enumerate(metas)}
    if req.all:
        q_idx = list(range(len(metas)))
    else:
        unknown = [q for q in req.query_ids if q not in pos]
        if unknown:
            raise HTTPException(404, f"unknown query id {unknown[0]!r}")
        q_idx = [pos[q] for q in req.query_ids]
    ids, labels, cams = [m.id for m in metas], [m.label for m in metas], [m.camera for m in metas]
    if req.rerank:
        from indexing.rerank import RerankParams, index_searcher, rerank_evaluate_within

        params = RerankParams(req.k1, req.k2, req.lambda_value)
        search = index_searcher(state.index, ids)
        res, _ = rerank_evaluate_within(vecs, ids, labels, cams, q_idx, req.ks, state.index.metric, params, search)
        return metas, [metas[i] for i in q_idx], res
    res = evaluate_retrieval(
        vecs[q_idx],
        [ids[i] for i in q_idx],
        [labels[i] for i in q_idx],
        [cams[i] for i in q_idx],
        vecs,
        ids,
        labels,
        cams,
        ks=req.ks,
        metric=state.index.metric,
    )
    return metas, [metas[i] for i in q_idx], res


def _evaluate(state: ServiceState, req: EvaluateRequest) -> EvaluateResponse:
    return EvaluateResponse(**run_evaluation(state, req)[2].to_json())


@router.post("/evaluate", response_model=EvaluateResponse, responses={404: {}, 422: {}, 503: {}})
async def evaluate(req: EvaluateRequest, state: ServiceState = Depends(ready_state)) -> EvaluateResponse:
    check_evaluation(state, req)
    return await run_in_threadpool(_evaluate, state, req)


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


@router.post("/evaluate/queries", response_model=PerQueryResponse, responses={404: {}, 422: {}, 503: {}})
async def evaluate_queries(req: EvaluateRequest, state: ServiceState = Depends(ready_state)) -> PerQueryResponse:
    """The same evaluation as ``POST /v1/evaluate`` (same body, same limit), with each query's AP: the page's
    rank list shows one query's AP, and its evaluation view runs the queries in chunks (its progress) and lists the
    worst."""
    check_evaluation(state, req)
    return await run_in_threadpool(per_query_scores, state, req)
