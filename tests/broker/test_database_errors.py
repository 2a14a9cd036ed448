"""Only a transient database failure is 503 "try again"; integrity and programming errors are not."""

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.exc import (
    DataError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from broker.errors import install_problem_handlers, is_transient


class _Orig(Exception):
    pass


def _dbapi(cls: type, invalidated: bool = False) -> Exception:
    return cls("SELECT 1", {}, _Orig("the driver's message"), connection_invalidated=invalidated)


CASES = [
    (_dbapi(OperationalError), 503, "unavailable"),
    (_dbapi(InterfaceError), 503, "unavailable"),
    (_dbapi(ProgrammingError, invalidated=True), 503, "unavailable"),  # the connection went away under it
    (PoolTimeout("QueuePool limit reached"), 503, "unavailable"),
    (DisconnectionError("gone"), 503, "unavailable"),
    (_dbapi(DataError), 422, "invalid-request"),
    (_dbapi(IntegrityError), 500, None),
    (_dbapi(ProgrammingError), 500, None),
    (_dbapi(InternalError), 500, None),
]


@pytest.fixture
def raising_app():
    app = FastAPI()
    install_problem_handlers(app)
    holder: dict[str, Exception] = {}

    @app.get("/boom")
    def boom() -> None:
        raise holder["exc"]

    return app, holder


@pytest.mark.parametrize(
    ("exc", "status", "slug"), CASES, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None
)
def test_only_transient_database_failures_are_503_with_retry_after(raising_app, exc, status, slug, caplog):
    app, holder = raising_app
    holder["exc"] = exc
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR, "broker.errors"):
        r = client.get("/boom")
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert is_transient(exc) == (status == 503)
    if slug is not None:
        assert r.json()["type"].endswith("/" + slug)
    if status == 503:
        assert int(r.headers["retry-after"]) > 0
    else:
        assert "retry-after" not in r.headers
    if status == 500:  # a bug: a bare body for the caller, the traceback in the log
        assert r.json()["detail"] == "internal error" and "driver" not in r.text
        assert any(record.exc_info for record in caplog.records), caplog.records


def test_an_error_without_an_http_status_raised_in_the_broker_is_a_500(raising_app):
    from m2kt.errors import LocalInputError

    app, holder = raising_app
    holder["exc"] = LocalInputError("a command line's error")
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and "command line" not in r.text
