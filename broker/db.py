"""Engine and sessions.

SQLite runs in WAL mode with a busy timeout, and write transactions start with
`BEGIN IMMEDIATE` so two writers never deadlock on a lock upgrade. PostgreSQL
serialises writers on the `broker_head` row (SELECT ... FOR UPDATE), which is
what keeps `seq` and the log's `index` gapless and in commit order.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


WRITE = "m2kt_write"


def make_engine(url: str, *, pool_size: int = 10, pool_timeout: float = 30.0, **kwargs: Any) -> Engine:
    """Create the engine with the per-backend settings this module's docstring explains.

    The pool holds ``pool_size`` connections and no overflow: a request that finds none free
    within ``pool_timeout`` seconds fails with SQLAlchemy's TimeoutError (503 `unavailable`).
    """
    if url.startswith("sqlite"):
        if ":memory:" not in url and "mode=memory" not in url:
            kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=pool_timeout)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=pool_timeout)
    connect_args = {"connect_timeout": 5}
    return create_engine(url, connect_args=connect_args, **kwargs)


class Sessions:
    """Two session factories on one engine: plain readers, and writers (BEGIN IMMEDIATE on SQLite)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.read = sessionmaker(engine, expire_on_commit=False)
        self.write = sessionmaker(engine.execution_options(**{WRITE: True}), expire_on_commit=False)

    def reader(self) -> Session:
        return self.read()

    def writer(self) -> Session:
        return self.write()

    @contextmanager
    def read_then_write(self) -> Iterator["ReadThenWrite"]:
        """One pool checkout for a unit of work that reads, does something else, then writes (a publish)."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                with conn.begin():  # committed at the end of `writing()`, or here for a unit that only read
                    yield ReadThenWrite(conn, shared=True)
            else:
                yield ReadThenWrite(conn, shared=False)


class ReadThenWrite:
    """The read phase and the write phase of one checkout.

    On PostgreSQL one transaction spans both: in READ COMMITTED the read holds no lock, and each later
    statement (the writers' row lock first) sees every commit before it. SQLite needs two: a deferred
    transaction that has read cannot take the write lock once another writer committed (SQLITE_BUSY),
    and BEGIN IMMEDIATE from the start would hold the lock across the work in between.
    """

    def __init__(self, conn: Connection, *, shared: bool) -> None:
        self.conn = conn
        self._shared = shared

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        if self._shared:
            yield self.conn
        else:
            with self.conn.begin():
                yield self.conn

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """The writers' transaction, committed when this block ends: BEGIN IMMEDIATE on SQLite."""
        if self._shared:
            try:
                yield self.conn
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()
        else:
            with self.conn.execution_options(**{WRITE: True}).begin():
                yield self.conn
