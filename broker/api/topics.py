"""Topics: counts, pages of packets, and the Server-Sent Events stream."""

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from broker.api import params
from broker.db import Sessions
from broker.deps import AnyAgentDep, BroadcasterDep, Caller, MetricsDep, SessionsDep, SettingsDep, StreamSlotsDep
from broker.events import Broadcaster, SlotStreamingResponse
from broker.metrics import Metrics
from broker.schemas import PacketPage, TopicOut
from broker.services import topics as topics_service
from m2kt.constants import PAGE_LIMIT_MAX
from m2kt.errors import InvalidRequest, TooManyRequests

router = APIRouter(prefix="/topics", tags=["topics"])

_SEQ = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also accepts '²', which int() refuses


@router.get("")
def list_topics(caller: AnyAgentDep, sessions: SessionsDep) -> list[TopicOut]:
    return topics_service.list_topics(sessions=sessions, include_quarantined=caller.sees_quarantined)


@router.get("/{topic}/packets")
def topic_packets(
    topic: params.TopicPath,
    caller: AnyAgentDep,
    sessions: SessionsDep,
    after: params.After = 0,
    limit: params.Limit = params.DEFAULT_LIMIT,
) -> PacketPage:
    items = topics_service.page(
        sessions=sessions,
        topic=params.topic(topic),
        after=after,
        limit=min(limit, PAGE_LIMIT_MAX),
        include_quarantined=caller.sees_quarantined,
    )
    return PacketPage(items=items, next_after=items[-1].seq if items else after)


def _frames(sessions: Sessions, topic: str, after: int, caller: Caller) -> list[tuple[int, str]]:
    """The SSE frames of the next page, encoded once for every stream that shares the read."""
    items = topics_service.page(
        sessions=sessions, topic=topic, after=after, limit=PAGE_LIMIT_MAX, include_quarantined=caller.sees_quarantined
    )
    return [(item.seq, f"id: {item.seq}\nevent: packet\ndata: {json.dumps(item.model_dump())}\n\n") for item in items]


async def _stream(
    request: Request,
    sessions: Sessions,
    broadcaster: Broadcaster,
    metrics: Metrics,
    topic: str,
    cursor: int,
    caller: Caller,
    keepalive: float,
) -> AsyncIterator[str]:
    wake = broadcaster.subscribe(topic)  # woken by the commits on this topic only
    metrics.event_streams.inc()
    try:
        yield ": stream open\n\n"
        while True:
            since = broadcaster.generation
            wake.clear()
            key = ("topic-page", topic, cursor, caller.sees_quarantined)
            read = functools.partial(_frames, sessions, topic, cursor, caller)
            frames = await broadcaster.shared_read(key, since, read)
            for seq, frame in frames:
                cursor = seq
                yield frame
            if len(frames) == PAGE_LIMIT_MAX:
                continue
            try:
                await asyncio.wait_for(wake.wait(), timeout=keepalive)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
    finally:
        broadcaster.unsubscribe(wake)
        metrics.event_streams.dec()


@router.get(
    "/{topic}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE: id = seq, event = packet"}},
)
async def topic_events(
    request: Request,
    topic: params.TopicPath,
    caller: AnyAgentDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    broadcaster: BroadcasterDep,
    metrics: MetricsDep,
    slots: StreamSlotsDep,
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID", max_length=20),
) -> StreamingResponse:
    params.topic(topic)
    cursor = _last_event_id(last_event_id)
    holder = caller.stream_holder
    if not slots.acquire(holder):
        raise TooManyRequests(f"this token already holds {slots.per_holder} event streams; close one first")
    release = functools.partial(slots.release, holder)
    try:
        if cursor is None:
            cursor = await run_in_threadpool(functools.partial(topics_service.current_seq, sessions=sessions))
    except BaseException:
        release()
        raise
    stream = _stream(request, sessions, broadcaster, metrics, topic, cursor, caller, settings.sse_keepalive_seconds)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return SlotStreamingResponse(stream, release, media_type="text/event-stream", headers=headers)


def _last_event_id(value: str | None) -> int | None:
    """The cursor a `Last-Event-ID` header names, None when absent or blank.

    Raises:
        InvalidRequest: anything but a non-negative 64-bit decimal integer.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not _SEQ.fullmatch(text) or int(text) > params.MAX_CURSOR:
        raise InvalidRequest("Last-Event-ID must be a packet seq (a non-negative 64-bit integer)")
    return int(text)
