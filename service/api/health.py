"""/health and /ready: always open, and answered on the event loop (``async``), never in the worker thread pool
that the heavy routes use, so they answer at once under any load. /metrics: behind VIDRET_METRICS_API_KEY when
set, else behind VIDRET_READ_API_KEY when that is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from service.deps import AUTH_RESPONSES, get_state, load_error_message, require_metrics_key
from service.schemas import Status
from service.state import ServiceState

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Status)
async def health() -> Status:
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses={503: {"description": "not loaded yet"}})
async def ready(state: ServiceState = Depends(get_state)) -> Response | Status:
    stopped = [w.stopped for w in (state.batcher, state.searcher) if w is not None and w.stopped is not None]
    if state.ready and not stopped:
        return Status(status="ready")
    detail = stopped[0] if stopped else "loading" if state.load_error is None else load_error_message(state)
    return JSONResponse({"detail": detail}, status_code=503)


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_metrics_key)], responses=AUTH_RESPONSES)
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = state.metrics
    if state.ready:
        registry.index_size.set(state.index.count)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
