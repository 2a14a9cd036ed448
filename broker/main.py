"""create_app(settings) -> FastAPI. Everything stateful lives on `app.state`, made in the lifespan."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from broker import api, dashboard
from broker.api import health
from broker.db import Sessions, make_engine
from broker.errors import PROBLEM_RESPONSES, install_problem_handlers
from broker.events import Broadcaster, PostgresListener, StreamSlots
from broker.guard import RequestGuard
from broker.metrics import Metrics
from broker.repositories import packets as packets_repo
from broker.settings import BrokerSettings
from broker.storage import BlobStore, open_store
from m2kt.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

DESCRIPTION = """The M2KT broker: verifies, stores and serves signed knowledge packets
(docs/protocol.md v1). Errors are RFC 9457 `application/problem+json`."""


def _libpq_url(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def sweep_orphans(sessions: Sessions, store: BlobStore, grace_seconds: float) -> int:
    """Delete blobs no packet references (left by a crash or a failed commit between blob write and commit)."""

    def referenced() -> set[str]:
        with sessions.reader() as session:
            return packets_repo.referenced_blobs(session=session)

    return store.sweep(referenced, grace_seconds)


def create_app(settings: BrokerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Every blocking route runs on one of these threads and holds at most one connection at a time:
        # a pool as large as the threads (plus the readiness probe's) never makes a thread wait for one.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        engine = make_engine(
            settings.database_url, pool_size=settings.worker_threads + 2, pool_timeout=settings.pool_timeout_seconds
        )
        sessions = Sessions(engine)
        store = open_store(settings)
        broadcaster = Broadcaster()
        broadcaster.attach(asyncio.get_running_loop())
        app.state.settings, app.state.sessions, app.state.store = settings, sessions, store
        app.state.broadcaster, app.state.metrics = broadcaster, Metrics()
        app.state.stream_slots = StreamSlots(settings.max_streams_per_agent)
        try:
            removed = sweep_orphans(sessions, store, settings.orphan_grace_seconds)
        except ServiceUnavailable:  # the object store is down: serve what the database can; sweep next start
            logger.warning("the blob store did not answer: orphans are swept at the next start")
            removed = 0
        logger.info("broker ready", extra={"orphans_removed": removed, "sqlite": settings.is_sqlite})
        listener = None
        if engine.dialect.name == "postgresql":
            listener = PostgresListener(_libpq_url(settings.database_url), broadcaster.notify)
            listener.start()
        try:
            yield
        finally:
            if listener is not None:
                listener.stop()
            engine.dispose()

    # redirect_slashes off: a path with a stray slash is a 404 problem, not a 307 to somewhere else
    app = FastAPI(title="M2KT broker", version="1", description=DESCRIPTION, lifespan=lifespan, redirect_slashes=False)
    install_problem_handlers(app)
    app.add_middleware(RequestGuard, settings=settings)
    app.include_router(health.router)
    app.include_router(api.router, responses=PROBLEM_RESPONSES)
    dashboard.install(app)
    return app
