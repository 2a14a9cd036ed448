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
from collections.abc import Callable

import psycopg

logger = logging.getLogger(__name__)

CHANNEL = "m2kt_packets"


class Broadcaster:
    """Fan-out of wake-ups to the event streams of this process; owned by `app.state`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()

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
        for event in self._waiters:
            event.set()


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
