"""Topics: their counts, pages of their packets and the newest seq, shaped as `broker.schemas` models.

The event streams (`broker.api.topics`) read their pages here too, so a page read by a
stream and one read by `GET /v1/topics/{topic}/packets` are the same query.
"""

from broker.db import Sessions
from broker.repositories import packets as packets_repo
from broker.schemas import PacketSummary, TopicOut
from broker.services.packets import summary

__all__ = ["current_seq", "list_topics", "page"]


def list_topics(*, sessions: Sessions, include_quarantined: bool) -> list[TopicOut]:
    """Every topic with a packet the caller may see: its packet count and last seq."""
    with sessions.reader() as session:
        stats = packets_repo.topic_stats(session=session, include_quarantined=include_quarantined)
    return [TopicOut(topic=t, packets=n, last_seq=s) for t, n, s in stats]


def page(*, sessions: Sessions, topic: str, after: int, limit: int, include_quarantined: bool) -> list[PacketSummary]:
    """Up to ``limit`` packets of ``topic`` with a seq after ``after``, in seq order."""
    with sessions.reader() as session:
        rows = packets_repo.topic_page(
            session=session, topic=topic, after=after, limit=limit, include_quarantined=include_quarantined
        )
        return [summary(p) for p in rows]


def current_seq(*, sessions: Sessions) -> int:
    """The newest packet's seq (0 before the first): where a stream without Last-Event-ID starts."""
    with sessions.reader() as session:
        return packets_repo.max_seq(session=session)
