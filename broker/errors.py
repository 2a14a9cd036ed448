"""The only place that writes `application/problem+json` (RFC 9457).

Domain errors (`M2KTError`), request-shape errors, HTTP errors of the router
(404 for unknown paths, 405) and database outages all leave here as problem
bodies; an unexpected exception is logged and answered as a bare 500 problem
without internals.

Only a transient database failure is "try again" (503 `unavailable` with
`Retry-After`, which `BrokerClient` retries): the database cannot be reached,
dropped the connection, is locked or busy (`OperationalError`, `InterfaceError`,
a connection SQLAlchemy invalidated, the pool's `TimeoutError`). A value the
database refuses (`DataError`) is the request's fault (422). Any other database
error (integrity, programming, internal) is a bug: retrying it cannot help, so it
is a 500 with its traceback in the log. The services turn the integrity errors
that a race can cause (a name, a key or a report taken meanwhile) into 409
`conflict` themselves.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from m2kt.constants import PROBLEM_BASE, PROBLEM_MEDIA_TYPE
from m2kt.errors import InvalidRequest, M2KTError, NotFound, ServiceUnavailable
from m2kt.problem import Problem, problem_for

logger = logging.getLogger(__name__)

_HTTP_SLUGS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    409: "conflict",
    413: "payload-too-large",
}


def problem_response(exc: M2KTError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = problem_for(exc).model_dump()
    if exc.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="m2kt"'}
    if exc.retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(exc.retry_after)}
    return JSONResponse(body, status_code=exc.status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request does not have the documented shape"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}"


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": Problem.model_json_schema()}}}


# Declared on every /v1 route so the OpenAPI schema says what clients (and fuzzers) will see.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_response("no, malformed or unknown bearer token (`unauthorized`)"),
    403: _problem_response("the caller's role may not do this, or the key is not the caller's"),
    404: _problem_response("no such agent, key or packet (`not-found`)"),
    409: _problem_response("already exists, or already reported (`conflict`)"),
    413: _problem_response("request body, payload or envelope over its size limit (`payload-too-large`)"),
    422: _problem_response("malformed request, envelope, statement, payload or manifest"),
    429: _problem_response("a per-agent cap is reached (`too-many-requests`); see Retry-After"),
    503: _problem_response("the database or blob store does not answer or is busy (`unavailable`); see Retry-After"),
}


def is_transient(exc: BaseException) -> bool:
    """A database failure that may pass: unreachable, disconnected, locked or busy; never integrity or a bug."""
    if isinstance(exc, DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return False


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(M2KTError)
    async def _domain(request: Request, exc: M2KTError) -> JSONResponse:
        if exc.status < 400:  # a client's or a command line's error (no HTTP status) raised in the broker: a bug
            return await _unexpected(request, exc)
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _shape(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(InvalidRequest(_validation_detail(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _HTTP_SLUGS.get(exc.status_code, "invalid-request")
        body = {
            "type": f"{PROBLEM_BASE}/{slug}",
            "title": str(exc.detail),
            "status": exc.status_code,
            "detail": str(exc.detail),
        }
        if exc.status_code == 404:
            body["detail"] = NotFound("no such resource").detail
        return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_MEDIA_TYPE, headers=exc.headers)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):
            logger.error("database unavailable", extra={"error": str(exc).splitlines()[0]})
            return problem_response(ServiceUnavailable("the database is not answering; try again"))
        if isinstance(exc, DataError):
            # a value the database refuses (the door should have refused it first): the request is at fault
            logger.warning("database refused a value", extra={"error": str(exc).splitlines()[0]})
            return problem_response(InvalidRequest("a value in the request cannot be stored"))
        return await _unexpected(request, exc)

    @app.exception_handler(DisconnectionError)
    async def _disconnected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("database connection lost", extra={"error": str(exc).splitlines()[0]})
        return problem_response(ServiceUnavailable("the database is not answering; try again"))

    @app.exception_handler(PoolTimeout)
    async def _busy(_: Request, exc: Exception) -> JSONResponse:
        logger.warning("database connection pool exhausted")
        return problem_response(ServiceUnavailable("the broker is busy; try again"))

    app.add_exception_handler(Exception, _unexpected)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: its traceback goes to the log, the caller gets a bare 500 without internals."""
    logger.error("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    body = {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "internal error",
    }
    return JSONResponse(body, status_code=500, media_type=PROBLEM_MEDIA_TYPE)
