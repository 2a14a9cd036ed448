"""Wake-ups for event streams.

The database is the single source of truth: a stream keeps its own cursor and,
when woken, reads the packets after it from the database. A wake-up therefore
carries no data and can be lost or duplicated without harm (each stream also
re-reads at every keep-alive). Wake-ups come from this process's own publishes
and, on PostgreSQL, from `LISTEN m2kt_packets`, so every replica on one database
delivers every packet.
"""

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any, TypeVar

import psycopg
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
Future = asyncio.Future[Any]

logger = logging.getLogger(__name__)

CHANNEL = "m2kt_packets"


def announce(session: Session, seq: int) -> None:
    """Wake the other replicas' streams when this transaction commits (PostgreSQL NOTIFY; SQLite has one process)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_notify('{CHANNEL}', :seq)"), {"seq": str(seq)})


class Broadcaster:
    """Fan-out of wake-ups to the event streams of this process; owned by `app.state`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()
        self.generation = 0  # wake-ups so far; a read started at generation g sees every commit they announced
        self._reads: dict[Hashable, tuple[int, Future]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        self._waiters.discard(event)

    @property
    def streams(self) -> int:
        return len(self._waiters)

    def notify(self) -> None:
        """Wake every stream; safe to call from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.generation += 1
        for event in self._waiters:
            event.set()

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

    Without a cap one token could open hundreds of streams, and every publish wakes every stream.
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
    """A thread that LISTENs on the packet channel and turns notifications into wake-ups.

    It reconnects with bounded backoff when the database goes away, and wakes all
    streams after reconnecting, since notifications sent meanwhile were lost.
    """

    def __init__(self, conninfo: str, on_notify: Callable[[], None]) -> None:
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
                    self._on_notify()
                    delay = 0.1
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=64):
                            self._on_notify()
            except psycopg.Error as exc:
                logger.warning("LISTEN connection lost, retrying", extra={"error": str(exc)})
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
