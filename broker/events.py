"""Wake-ups for event streams.

The database is the single source of truth: a stream keeps its own cursor and,
when woken, reads the packets after it from the database. A wake-up therefore
carries no data and can be duplicated without harm (each stream also re-reads at
every keep-alive). Wake-ups come from this process's own publishes and, on
PostgreSQL, from `LISTEN m2kt_packets`, so every replica on one database
delivers every packet.

A wake-up names the topics a commit touched and wakes only the streams of those
topics (and those that follow every topic, like the dashboard's): with a
thousand streams open, a publish wakes the few that can have something new, not
all of them. A wake-up that cannot name its topics (a quarantine, a lost
LISTEN connection, a notification from an older replica) wakes every stream.
"""

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Iterable
from typing import Any, TypeVar

import psycopg
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
Future = asyncio.Future[Any]

logger = logging.getLogger(__name__)

CHANNEL = "m2kt_packets"
_MAX_NOTIFY = 7900  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more


def notify_payload(seq: int, topics: Iterable[str] | None) -> str:
    """The NOTIFY payload: JSON naming the topics; the bare seq (wake every stream) for none or too many bytes."""
    if topics is not None:
        payload = json.dumps({"seq": seq, "topics": sorted(topics)}, separators=(",", ":"))
        if len(payload.encode("utf-8")) < _MAX_NOTIFY:
            return payload
    return str(seq)


def topics_of(payload: str) -> frozenset[str] | None:
    """The topics a NOTIFY payload names; None (every stream) for a bare seq or anything unexpected."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    topics = body.get("topics") if isinstance(body, dict) else None
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        return None
    return frozenset(topics)


def announce(session: Session | Connection, seq: int, topics: Iterable[str] | None = None) -> None:
    """Wake the other replicas' streams of ``topics`` (None: all) when this transaction commits.

    PostgreSQL NOTIFY; SQLite has one process.
    """
    dialect = session.dialect if isinstance(session, Connection) else session.get_bind().dialect
    if dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_notify('{CHANNEL}', :p)"), {"p": notify_payload(seq, topics)})


class Broadcaster:
    """Fan-out of wake-ups to the event streams of this process; owned by `app.state`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._topic_of: dict[asyncio.Event, str | None] = {}  # each stream's topic; None: it follows every topic
        self._by_topic: dict[str | None, set[asyncio.Event]] = {}
        # Wake-ups so far, of any topic; a read started at generation g sees every commit they announced.
        # One counter for all topics is conservative: a wake-up elsewhere only makes a stream read afresh.
        self.generation = 0
        # Wake-ups delivered, by the woken stream's topic; a topic's count goes with its last stream.
        self.woken: Counter[str | None] = Counter()
        self._reads: dict[Hashable, tuple[int, Future]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, topic: str | None = None) -> asyncio.Event:
        """A wake-up event for the commits touching ``topic``; None: for every commit."""
        event = asyncio.Event()
        self._topic_of[event] = topic
        self._by_topic.setdefault(topic, set()).add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        if event not in self._topic_of:
            return
        topic = self._topic_of.pop(event)
        waiters = self._by_topic[topic]
        waiters.discard(event)
        if not waiters:
            del self._by_topic[topic]
            self.woken.pop(topic, None)

    @property
    def streams(self) -> int:
        return len(self._topic_of)

    def notify(self, topics: Iterable[str] | None = None) -> None:
        """Wake the streams of ``topics`` and those following every topic (None: every stream); any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake, None if topics is None else frozenset(topics))

    def _wake(self, topics: frozenset[str] | None) -> None:
        self.generation += 1
        if topics is None:
            woken: Iterable[asyncio.Event] = list(self._topic_of)
        else:
            woken = [e for t in (None, *topics) for e in self._by_topic.get(t, ())]
        for event in woken:
            event.set()
            self.woken[self._topic_of[event]] += 1

    async def shared_read(self, key: Hashable, since: int, read: Callable[[], T]) -> T:
        """Run ``read`` in the thread pool, or join the identical read already running.

        A hundred streams woken by one publish, on one topic at one cursor, make one query, not a
        hundred. A caller that cleared its wake-up at generation ``since`` only joins a read that
        started at or after it, so it never misses a commit announced before it cleared.
        """
        entry = self._reads.get(key)
        if entry is None or entry[0] < since:
            future: Future = asyncio.ensure_future(run_in_threadpool(read))
            entry = (self.generation, future)
            self._reads[key] = entry

            def forget(done: Future, key: Hashable = key, entry: tuple[int, Future] = entry) -> None:
                if self._reads.get(key) is entry:
                    del self._reads[key]
                if not done.cancelled():
                    done.exception()  # retrieved: every stream that awaited it went away; no "never retrieved" log

            future.add_done_callback(forget)
        result: T = await asyncio.shield(entry[1])  # one stream going away does not cancel the others' read
        return result


class StreamSlots:
    """Per-token caps on concurrent event streams; owned by `app.state`, used on the event loop only.

    Without a cap one token could open hundreds of streams, each woken by every publish on its topic.
    """

    def __init__(self, per_holder: int) -> None:
        self.per_holder = per_holder
        self._held: dict[str, int] = {}

    def acquire(self, holder: str) -> bool:
        """Take a slot for ``holder``; False when it already holds its cap."""
        if self._held.get(holder, 0) >= self.per_holder:
            return False
        self._held[holder] = self._held.get(holder, 0) + 1
        return True

    def release(self, holder: str) -> None:
        left = self._held.get(holder, 0) - 1
        if left > 0:
            self._held[holder] = left
        else:
            self._held.pop(holder, None)


class SlotStreamingResponse(StreamingResponse):
    """A stream that gives its `StreamSlots` slot back however it ends (finished, failed or cancelled)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class PostgresListener:
    """A thread that LISTENs on the packet channel and turns notifications into wake-ups of their topics.

    It reconnects with bounded backoff when the database goes away, and wakes all
    streams after reconnecting, since notifications sent meanwhile were lost.
    """

    def __init__(self, conninfo: str, on_notify: Callable[[frozenset[str] | None], None]) -> None:
        self._conninfo = conninfo
        self._on_notify = on_notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="m2kt-pg-listen", daemon=True)
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.ready.set()
                    self._on_notify(None)
                    delay = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=64):
                            self._on_notify(topics_of(note.payload))
            except psycopg.Error as exc:
                logger.warning("LISTEN connection lost, retrying", extra={"error": str(exc)})
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
