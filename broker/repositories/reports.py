"""Student reports and quarantine history."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.models import Quarantine, Report


def find(*, session: Session, packet_id: str, student_id: int) -> Report | None:
    stmt = select(Report).where(Report.packet_id == packet_id, Report.student_id == student_id)
    return session.scalar(stmt)


def add(*, session: Session, report: Report) -> Report:
    session.add(report)
    session.flush()
    return report


def for_packet(*, session: Session, packet_id: str) -> list[Report]:
    stmt = select(Report).where(Report.packet_id == packet_id).order_by(Report.id)
    return list(session.scalars(stmt))


def add_quarantine_action(*, session: Session, entry: Quarantine) -> None:
    session.add(entry)
    session.flush()
