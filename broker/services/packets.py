"""Reading packets, reports, quarantine and provenance, shaped as `broker.schemas` models."""

import json
from typing import Any, Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import clock, events
from broker.db import Sessions
from broker.models import Agent, Packet, Quarantine, Report
from broker.repositories import agents as agents_repo
from broker.repositories import log as log_repo
from broker.repositories import packets as packets_repo
from broker.repositories import reports as reports_repo
from broker.schemas import (
    LogEntryOut,
    PacketOut,
    PacketSummary,
    ProvenanceKey,
    ProvenanceOut,
    ProvenanceParent,
    QuarantineOut,
    ReportCounts,
    ReportIn,
    ReportOut,
)
from broker.services import eventlog
from m2kt.errors import Conflict, Forbidden, NotFound
from m2kt.jsonutil import canonical


def summary(packet: Packet) -> PacketSummary:
    return PacketSummary(
        id=packet.id,
        seq=packet.seq,
        teacher=packet.teacher.name,
        topics=[t.topic for t in packet.topics],
        status="quarantined" if packet.status == "quarantined" else "published",
        received_at=clock.rfc3339(packet.received_at),
        key_revoked=packet.key.revoked,
    )


def _get(session: Session, packet_id: str) -> Packet:
    packet = packets_repo.get(session=session, packet_id=packet_id)
    if packet is None:
        raise NotFound(f"no packet {packet_id}")
    return packet


def get_packet(*, session: Session, packet_id: str) -> PacketOut:
    packet = _get(session, packet_id)
    counts = packets_repo.report_counts(session=session, packet_id=packet_id)
    return PacketOut(
        **summary(packet).model_dump(),
        statement=json.loads(packet.statement),
        reports=ReportCounts(
            count=sum(counts.values()),
            accepted=counts.get("accepted", 0),
            rolled_back=counts.get("rolled_back", 0),
            rejected=counts.get("rejected", 0),
        ),
    )


def get_blob_ref(*, session: Session, packet_id: str, which: str) -> tuple[str, int]:
    packet = _get(session, packet_id)
    if which == "payload":
        return packet.payload_sha256, packet.payload_size
    return packet.envelope_sha256, packet.envelope_size


def _report_out(report: Report) -> ReportOut:
    return ReportOut.model_validate_json(report.body)


def submit_report(*, sessions: Sessions, student: Agent, packet_id: str, report: ReportIn) -> ReportOut:
    """Store a student's report (one per student and packet) and log it.

    Raises:
        NotFound: no such packet.  Conflict: this student already reported on it.
    """
    try:
        with sessions.writer() as session, session.begin():
            head = log_repo.lock_head(session=session)
            _get(session, packet_id)
            if reports_repo.find(session=session, packet_id=packet_id, student_id=student.id):
                raise Conflict(f"{student.name} already reported on packet {packet_id}")
            now = clock.now()
            row = Report(packet_id=packet_id, student_id=student.id, verdict=report.verdict, body="", created_at=now)
            reports_repo.add(session=session, report=row)
            out = ReportOut(
                id=row.id,
                packet=packet_id,
                student=student.name,
                created_at=clock.rfc3339(now),
                **report.model_dump(),
            )
            body = out.model_dump(mode="json")
            row.body = canonical(body).decode("utf-8")
            eventlog.append(session=session, head=head, kind="report", subject=packet_id, body=body, at=now)
    except IntegrityError as exc:
        raise Conflict(f"{student.name} already reported on packet {packet_id}") from exc
    return out


def list_reports(*, session: Session, packet_id: str) -> list[ReportOut]:
    _get(session, packet_id)
    return [_report_out(r) for r in reports_repo.for_packet(session=session, packet_id=packet_id)]


def set_quarantine(
    *, sessions: Sessions, broadcaster: events.Broadcaster, packet_id: str, reason: str | None
) -> QuarantineOut:
    """Quarantine (reason given) or lift (reason None); repeating the current state changes nothing.

    Wakes this process's event streams once committed (other replicas hear the NOTIFY).
    """
    target: Literal["published", "quarantined"] = "quarantined" if reason is not None else "published"
    with sessions.writer() as session, session.begin():
        head = log_repo.lock_head(session=session)
        packet = _get(session, packet_id)
        if packet.status != target:
            now = clock.now()
            packet.status = target
            action = "quarantine" if reason is not None else "lift"
            reports_repo.add_quarantine_action(
                session=session,
                entry=Quarantine(packet_id=packet_id, action=action, reason=reason or "", at=now),
            )
            body: dict[str, Any] = {"packet": packet_id, "action": action}
            if reason is not None:
                body["reason"] = reason
            kind = "packet.quarantine" if reason is not None else "packet.quarantine.lift"
            eventlog.append(session=session, head=head, kind=kind, subject=packet_id, body=body, at=now)
            events.announce(session, packet.seq)  # topic counts changed: live views refetch
    broadcaster.notify()  # a spurious wake-up costs one read; a missed one leaves a live view stale
    return QuarantineOut(id=packet_id, status=target, reason=reason)


def provenance(*, session: Session, packet_id: str) -> ProvenanceOut:
    packet = _get(session, packet_id)
    key = agents_repo.get_key(session=session, keyid=packet.keyid)
    if key is None:  # the foreign key makes this impossible; refuse rather than invent
        raise Forbidden("the packet's key is missing")
    entries = log_repo.about(session=session, subject=packet_id)
    parent_ids = [str(p) for p in json.loads(packet.statement)["predicate"].get("parents", [])]
    known = packets_repo.teachers_of(session=session, packet_ids=parent_ids)  # one query, not one per parent
    parents = [ProvenanceParent(id=p, known=p in known, teacher=known.get(p)) for p in parent_ids]
    return ProvenanceOut(
        id=packet.id,
        seq=packet.seq,
        teacher=packet.teacher.name,
        key=ProvenanceKey(keyid=key.keyid, public_key=key.public_key, revoked=key.revoked),
        parents=parents,
        log=[LogEntryOut(**eventlog.as_dict(e)) for e in entries],
        bodies={str(e.index): json.loads(e.body) for e in entries},
    )
