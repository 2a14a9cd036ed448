"""Student reports on packets."""

from fastapi import APIRouter

from broker.api import params
from broker.deps import AnyAgentDep, MetricsDep, SessionsDep, StudentDep
from broker.schemas import ReportIn, ReportOut
from broker.services import packets as packets_service

router = APIRouter(prefix="/packets/{packet_id}/reports", tags=["reports"])


@router.post("", status_code=201)
def submit_report(
    packet_id: params.PacketIdPath,
    body: ReportIn,
    caller: StudentDep,
    sessions: SessionsDep,
    metrics: MetricsDep,
) -> ReportOut:
    assert caller.agent is not None
    out = packets_service.submit_report(
        sessions=sessions, student=caller.agent, packet_id=params.packet_id(packet_id), report=body
    )
    metrics.reports.labels(verdict=out.verdict).inc()
    return out


@router.get("")
def list_reports(packet_id: params.PacketIdPath, _: AnyAgentDep, sessions: SessionsDep) -> list[ReportOut]:
    with sessions.reader() as session:
        return packets_service.list_reports(session=session, packet_id=params.packet_id(packet_id))
