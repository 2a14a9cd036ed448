"""Trust over time, as the broker shows it: students' trust reports and each teacher's overview.

A student that refuses something of a teacher because of what it trusted before (an older
version or head, an expired head, a withheld packet, a revoked key, pieces of different
packets) or that removes a CAL because its key was revoked, tells the broker with a *trust
report*. Reports go into the hash-chained event log (kind ``trust.report``, subject the
teacher), so nobody rewrites them later; the same report again adds nothing. The overview
(`teacher_trust`) is what the dashboard and ``m2kt-broker teachers show`` print.
"""

import hashlib
import json
import logging

from sqlalchemy.orm import Session

from broker import clock
from broker.db import Sessions
from broker.models import Agent, LogEntry
from broker.repositories import agents as agents_repo
from broker.repositories import log as log_repo
from broker.repositories import trust as trust_repo
from broker.schemas import (
    TeacherHeadOut,
    TeacherTrustOut,
    TopicVersions,
    TrustKeyOut,
    TrustReportCount,
    TrustReportIn,
    TrustReportOut,
)
from broker.services import eventlog
from m2kt import keys
from m2kt.errors import M2KTError, NotFound
from m2kt.head import Head, open_head
from m2kt.jsonutil import canonical

__all__ = ["list_trust_reports", "submit_trust_report", "teacher_trust"]

logger = logging.getLogger(__name__)

REPORTS_SHOWN = 500  # the newest trust reports a listing or an overview reads


def _teacher(session: Session, name: str) -> Agent:
    agent = agents_repo.get_by_name(session=session, name=name)
    if agent is None or agent.role != "teacher":
        raise NotFound(f"no teacher named {name!r}")
    return agent


def _out(entry: LogEntry) -> TrustReportOut:
    return TrustReportOut(index=entry.index, at=entry.at, **json.loads(entry.body))


def submit_trust_report(
    *, sessions: Sessions, student: Agent, teacher: str, report: TrustReportIn
) -> tuple[TrustReportOut, bool]:
    """Log a student's trust report on ``teacher``; (report, created), not created when it was logged before.

    Raises:
        NotFound: no such teacher.
    """
    body = {"teacher": teacher, "student": student.name, **report.model_dump()}
    digest = hashlib.sha256(canonical(body)).hexdigest()
    with sessions.writer() as session, session.begin():
        head = log_repo.lock_head(session=session)
        _teacher(session, teacher)
        found = trust_repo.find_entry(
            session=session, kind=trust_repo.TRUST_REPORT, subject=teacher, body_sha256=digest
        )
        if found is not None:
            return _out(found), False
        entry = eventlog.append(
            session=session, head=head, kind=trust_repo.TRUST_REPORT, subject=teacher, body=body, at=clock.now()
        )
        out = _out(entry)
    logger.info("trust report", extra={"teacher": teacher, "student": student.name, "reason": report.reason})
    return out, True


def list_trust_reports(*, session: Session, teacher: str) -> list[TrustReportOut]:
    """The newest trust reports on ``teacher`` (at most `REPORTS_SHOWN`), oldest first."""
    _teacher(session, teacher)
    return [_out(e) for e in trust_repo.trust_reports(session=session, teacher=teacher, limit=REPORTS_SHOWN)]


def _stored_head(agent: Agent, envelope: str) -> Head | None:
    """The stored head, read again (it verified when put; a key revoked since still reads it here)."""
    trusted = {k.keyid: keys.public_from_b64(k.public_key) for k in agent.keys}
    try:
        return open_head(envelope.encode(), trusted)
    except M2KTError as exc:  # cannot happen for a head this broker stored; show no topics rather than fail
        logger.warning("stored head unreadable", extra={"teacher": agent.name, "error": exc.detail})
        return None


def teacher_trust(*, session: Session, name: str, include_quarantined: bool) -> TeacherTrustOut:
    """Teacher ``name``'s current head and expiry, versions per topic, keys, and the students' trust reports.

    Packets counted per topic leave out quarantined ones unless ``include_quarantined`` (students
    never see those).

    Raises:
        NotFound: no such teacher.
    """
    agent = _teacher(session, name)
    row = trust_repo.head_of(session=session, teacher_id=agent.id)
    head = None if row is None else _stored_head(agent, row.envelope)
    named = head.topics if head is not None else {}
    stats = {
        t: (n, v)
        for t, n, v in trust_repo.versions_by_topic(
            session=session, teacher_id=agent.id, include_quarantined=include_quarantined
        )
    }
    topics = []
    for topic in sorted(set(stats) | set(named)):
        n, latest = stats.get(topic, (0, None))
        h = named.get(topic)
        topics.append(
            TopicVersions(
                topic=topic,
                packets=n,
                latest_version=latest,
                head_version=h.version if h else None,
                head_packet=h.packet if h else None,
            )
        )
    counts: dict[tuple[str, str, str], TrustReportCount] = {}
    for entry in trust_repo.trust_reports(session=session, teacher=name, limit=REPORTS_SHOWN):
        report = _out(entry)
        key = (report.student, report.reason, report.action)
        seen = counts.get(key)
        n = seen.reports + 1 if seen else 1
        counts[key] = TrustReportCount(
            student=report.student, reason=report.reason, action=report.action, reports=n, last_at=report.at
        )
    head_out = None
    if row is not None:
        expires, received = row.expires_at, row.received_at
        head_out = TeacherHeadOut(
            version=row.version,
            expires=clock.rfc3339(expires),
            expired=expires <= clock.now(),
            received_at=clock.rfc3339(received),
        )
    key_rows = [
        TrustKeyOut(
            keyid=k.keyid,
            public_key=k.public_key,
            revoked=k.revoked,
            created_at=clock.rfc3339(k.created_at),
            revoked_at=clock.rfc3339(k.revoked_at) if k.revoked_at else None,
        )
        for k in agent.keys
    ]
    return TeacherTrustOut(
        teacher=name,
        threshold=agent.threshold,
        head=head_out,
        topics=topics,
        keys=key_rows,
        revoked_keys=[k.keyid for k in agent.keys if k.revoked],
        reports=sorted(counts.values(), key=lambda c: (c.student, c.reason, c.action)),
    )
