"""Liveness, readiness and metrics: outside `/v1`, no token."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from broker.deps import BroadcasterDep, MetricsDep, SessionsDep
from broker.errors import problem_response
from m2kt.errors import ServiceUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:  # async: answers on the event loop even when every worker thread is busy
    return {"status": "ok"}


def _database_answers(sessions: SessionsDep) -> bool:
    try:
        with sessions.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:  # any failure means "not ready"; the reason is not the caller's business
        return False


@router.get("/readyz", responses={503: {"description": "the database does not answer"}})
async def readyz(sessions: SessionsDep) -> Response:
    if await run_in_threadpool(_database_answers, sessions):
        return JSONResponse({"status": "ready"})
    return problem_response(ServiceUnavailable("the database does not answer"))


@router.get("/metrics", response_class=Response)
def metrics(metrics: MetricsDep, broadcaster: BroadcasterDep) -> Response:
    metrics.event_streams.set(broadcaster.streams)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
