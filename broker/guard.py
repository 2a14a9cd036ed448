"""The door: limits and strict input checks that run before any route, dependency or token check.

FastAPI reads and parses a JSON body before it resolves a route's dependencies, so a
body-size check or a token check inside a route comes after the work it should prevent
(an unauthenticated 200 MiB body would be read whole, then refused with 401). This ASGI
middleware sits in front of everything:

- a request whose `Content-Length` exceeds its route's limit is answered 413 before a
  byte of the body is read;
- the publish route streams (broker/upload.py limits each part); here the whole stream
  is counted too, so chunked bodies and ignored parts stop at the same limit;
- every other body is read up to its limit (chunked or not) and checked once, strictly:
  JSON bodies by `m2kt.jsonutil.loads_strict` (depth, finite numbers, integers RFC 8785 can
  canonicalize,
  no duplicate keys, no NUL or lone surrogate), form bodies for valid UTF-8 and no NUL,
  then replayed to the app;
- a path or query string carrying a NUL is refused (404 / 422) before it can reach a
  database that would choke on it;
- every response says `X-Content-Type-Options: nosniff`; dashboard pages also get a strict
  Content-Security-Policy, `X-Frame-Options: DENY` and `Referrer-Policy: same-origin`.

Refusals are `M2KTError`s rendered by `broker.errors.problem_response`, the one writer of
problem bodies.
"""

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.errors import problem_response
from broker.settings import BrokerSettings
from m2kt.constants import MAX_BODY_JSON_DEPTH
from m2kt.errors import InvalidRequest, M2KTError, NotFound, PayloadTooLarge
from m2kt.jsonutil import SAFE_INT_MAX, JSONError, bad_text, loads_strict

__all__ = ["RequestGuard", "body_limit"]

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers of a publish
_REPORTS = re.compile(r"/v1/packets/[^/]+/reports")
_WITH_BODY = {"POST", "PUT", "PATCH", "DELETE"}
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"


def body_limit(settings: BrokerSettings, method: str, path: str) -> tuple[int, bool]:
    """(the byte limit of a request's body, whether the route streams it itself)."""
    if method == "POST" and path == "/v1/packets":
        return settings.max_payload_bytes + settings.max_envelope_bytes + MULTIPART_OVERHEAD, True
    if method == "POST" and _REPORTS.fullmatch(path):
        return settings.max_report_bytes, False
    return settings.max_json_body_bytes, False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit():  # the server refuses these first; never trust it blindly
        raise InvalidRequest("Content-Length must be a non-negative decimal integer")
    return int(value)


def _check_target(scope: Scope) -> None:
    path: str = scope.get("path", "")
    if bad_text(path) is not None or any(ord(ch) < 0x20 for ch in path):
        raise NotFound("no such resource")
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            raise InvalidRequest("a query parameter contains a NUL character")


def _check_body(scope: Scope, body: bytes) -> None:
    if not body:
        return
    ctype = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if ctype == _MULTIPART:
        return  # only the publish route takes multipart, and it streams; elsewhere the route refuses it
    if ctype == _FORM:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest("the form body is not UTF-8") from exc
        for name, value in parse_qsl(text, keep_blank_values=True):
            why = bad_text(name) or bad_text(value)
            if why is not None:
                raise InvalidRequest(f"form field {name[:40]!r} contains {why}")
        return
    try:
        # bodies are stored as canonical JSON (RFC 8785) and hashed into the log: integers within its safe range
        loads_strict(body, max_depth=MAX_BODY_JSON_DEPTH, max_int=SAFE_INT_MAX)
    except JSONError as exc:
        raise InvalidRequest(f"body: {exc}") from exc


async def _read_capped(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client went away before the body arrived")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server would

    return replay


_ALL_HEADERS = [(b"x-content-type-options", b"nosniff")]
_DASHBOARD_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def _secured(send: Send, path: str) -> Send:
    extra = _ALL_HEADERS + (_DASHBOARD_HEADERS if path == "/dashboard" or path.startswith("/dashboard/") else [])

    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {bytes(k).lower() for k, _ in message.get("headers", [])}
            added = [(k, v) for k, v in extra if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *added]}
        await send(message)

    return secured


def _counted(receive: Receive, limit: int) -> Receive:
    size, complete = 0, False

    async def counted() -> Message:
        nonlocal size, complete
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
            complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect" and not complete:
            # as for the other routes: a body cut short is the client's doing, not an unhandled error (a 500)
            raise InvalidRequest("the client went away before the body arrived")
        return message

    return counted


class RequestGuard:
    """ASGI middleware applying this module's checks; see the module docstring."""

    def __init__(self, app: ASGIApp, settings: BrokerSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _secured(send, scope.get("path", ""))
        try:
            receive = await self._admit(scope, receive)
        except M2KTError as exc:
            await problem_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Callable[[], Awaitable[Any]]:
        _check_target(scope)
        method: str = scope["method"]
        limit, streamed = body_limit(self.settings, method, scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"a request body of {declared} bytes exceeds the limit of {limit}")
        if streamed:
            return _counted(receive, limit)
        if method not in _WITH_BODY:
            return receive  # a body on GET/HEAD is never read by any route
        body = await _read_capped(receive, limit)
        _check_body(scope, body)
        return _replay(body, receive)
