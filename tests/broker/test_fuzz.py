"""Fuzzing the API with schemathesis, from the broker's own OpenAPI schema, with a token of each role.

Every generated request must get a documented status with a documented content type and a body
that matches its schema, and never a 5xx. The check that schema-valid data is *accepted* is left
out: the schema cannot express the protocol's semantic checks (a random envelope is
schema-valid multipart and correctly refused with 422).

CI runs a short pass (``M2KT_FUZZ_EXAMPLES``, default 3 per operation and role, on both
databases). The long pass: ``M2KT_FUZZ_EXAMPLES=125 .venv/bin/python -m pytest tests/broker/test_fuzz.py -k sqlite -rA``
(20 operations x 3 roles x 100 = 6,000 generated cases); ``-rA`` shows its counts.
"""

import json
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import factory
import httpx
import pytest
import schemathesis
from brokerkit import ADMIN_TOKEN
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance
from test_dashboard import csrf

from m2kt.constants import PROBLEM_MEDIA_TYPE
from m2kt.problem import Problem

pytestmark = pytest.mark.slow  # fuzz tests: thousands of generated requests

EXAMPLES = int(os.environ.get("M2KT_FUZZ_EXAMPLES", "3"))


def test_fuzz_every_operation_with_every_role(broker):
    teacher = broker.teacher("fuzz-teacher")
    _, student = broker.student("fuzz-student")
    with broker.http(teacher.token) as http:  # something to find, so that reads get past 404
        _, env, payload = factory.packet(teacher.key, topics=["a.x"])
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    schema = schemathesis.openapi.from_url(f"{broker.url}/openapi.json")
    counts = {"cases": 0, "5xx": 0, "operations": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        counts["operations"] += 1
        timeout = STREAM_TIMEOUT if _streams(operation) else 30
        for role, token in (("admin", ADMIN_TOKEN), ("teacher", teacher.token), ("student", student)):
            headers = {"Authorization": f"Bearer {token}"}

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                counts["cases"] += 1
                response = case.call(base_url=broker.url, headers=headers, timeout=timeout)  # noqa: B023 (runs now)
                counts["5xx"] += response.status_code >= 500
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            try:
                check()
            except Exception as exc:  # collect every operation's failure, then report them together
                failures.append(f"{operation.label} as {role}: {str(exc)[:600]}")
    logging.getLogger(__name__).warning("fuzz: %s", counts)  # shown by pytest -rA / on failure
    assert not failures, "\n\n".join(failures[:5])
    assert counts["operations"] >= 15
    assert counts["cases"] >= counts["operations"] * 3
    assert counts["5xx"] == 0


# An event stream never ends: schemathesis reads it until the read half of the timeout has passed in
# total, so status, headers and the opening comment are checked in seconds rather than 30 per case.
STREAM_TIMEOUT = (30, 5)


def _streams(operation) -> bool:
    content = operation.definition.raw.get("responses", {}).get("200", {}).get("content", {})
    return "text/event-stream" in content


# -- headers and dashboard forms ------------------------------------------------------------------
# The schema above says nothing about headers or the dashboard's forms, so schemathesis leaves them
# alone. These tests draw them with hypothesis: `Last-Event-ID` on the event stream,
# `Content-Length` (any text, one or two of them, against bodies shorter or longer than it says)
# on every kind of body route, and `Origin`/`Referer` with the dashboard's three forms, whose
# fields are drawn too. Requests go out as raw bytes where httpx would refuse or fix the header.
# Every answer must be < 500, and a 4xx must be a problem (application/problem+json, the
# `Problem` shape, its status the response's), with two exceptions that are not the broker's to
# shape: the HTTP server's own refusal of a request it cannot frame (uvicorn: 400 text/plain
# "Invalid HTTP request received.", before the app sees it) and the sign-in page, which answers a
# wrong token (401) or a throttled address (429) with the page itself. No request may log an
# unhandled error either (a 500 the client never saw, because it had already hung up).
HEADER_EXAMPLES = EXAMPLES * 10  # 30 per test and database in CI; the long pass 1,250
FRAMING_REFUSAL = b"Invalid HTTP request received."


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def fuzz_broker(database_url, tmp_path):
    """A broker whose stream cap and keep-alive let hundreds of fuzzed streams come and go, and its app."""
    from brokerkit import Broker, ServerThread, broker_settings

    settings = broker_settings(database_url, tmp_path / "data", max_streams_per_agent=10_000, sse_keepalive_seconds=0.2)
    with ServerThread(settings) as server:
        broker = Broker(server.url, settings, "sqlite" if settings.is_sqlite else "postgresql")
        yield broker, server.server.config.app


def _raw(url: str, request: bytes, wait: float = 10.0) -> Answer | None:
    """Send ``request`` byte for byte; the first answer, or None when the server waits for more (or hangs up)."""
    parts = urlsplit(url)
    data = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
        sock.sendall(request)
        try:
            while (answer := _parse(data)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    return _parse(data, eof=True)
                data += chunk
        except TimeoutError:
            return None
    return answer


def _parse(data: bytes, eof: bool = False) -> Answer | None:
    """The response in ``data`` once complete (a stream: once its headers are in)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("content-type", "").startswith("text/event-stream"):
        return Answer(status, headers, b"")
    if "content-length" in headers:
        n = int(headers["content-length"])
        return Answer(status, headers, rest[:n]) if len(rest) >= n else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size_line, crlf, rest = rest.partition(b"\r\n")
            if not crlf:
                return None
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return Answer(status, headers, body)
            if len(rest) < size + 2:
                return None
            body, rest = body + rest[:size], rest[size + 2 :]
    return Answer(status, headers, rest) if eof else None


def _check(answer: Answer, *, login_page: bool = False) -> str:
    """The kind of answer; fails on a 5xx or a 4xx that is not a problem (but for the two exceptions)."""
    assert answer.status < 500, (answer.status, answer.body[:300])
    if answer.status < 400:
        return "ok"
    media = answer.headers.get("content-type", "")
    if answer.status == 400 and media.startswith("text/plain") and answer.body == FRAMING_REFUSAL:
        return "framing"
    if login_page and answer.status in (401, 429) and media.startswith("text/html"):
        return "login-page"
    assert media.startswith(PROBLEM_MEDIA_TYPE), (answer.status, media, answer.body[:300])
    body = json.loads(answer.body)
    Problem.model_validate(body)
    assert body["status"] == answer.status, body
    return "problem"


def _server_already_answered(record: logging.LogRecord) -> bool:
    """uvicorn's race, not the broker's: its h11 server refused the body's framing (its own 400, the
    connection closing) while the broker's answer to the same request was on its way; uvicorn then
    raises on the broker's send instead of dropping it. The client got the 400 either way."""
    return "LocalProtocolError" in (record.exc_text or "") and "MUST_CLOSE" in (record.exc_text or "")


def _no_unhandled_errors(caplog) -> None:
    unhandled = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("broker") and not _server_already_answered(r)
    ]
    assert not unhandled, [(r.getMessage(), r.__dict__.get("path"), r.exc_text) for r in unhandled[:3]]


# Header text: anything but CR/LF (which would end the header), with the cases parsers get wrong.
_TRICKY = [
    b"",
    b" ",
    b"\t",
    b"0",
    b"-1",
    b"+1",
    b"1e3",
    b"0x10",
    b"1_000",
    b"1.0",
    b"\xc2\xb2",
    b"\xef\xbc\x91",
    b"18446744073709551616",
    b"9223372036854775808",
    b"9223372036854775807",
    b"00000000000000000001",
    b"\x00",
    b"5\x00",
    b"1, 2",
    b"\xff\xfe",
    b"null",
    b"http://[",
    b"http://evil.example",
]
header_values = st.one_of(
    st.sampled_from(_TRICKY),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda i: str(i).encode()),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def _request(method: str, path: str, host: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}".encode(), b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_fuzzed_last_event_id_headers(fuzz_broker, caplog):
    broker, _app = fuzz_broker
    teacher = broker.teacher()
    _, student = broker.student()
    with broker.http(teacher.token) as http:  # something to replay, so that small cursors stream packets
        _, env, payload = factory.packet(teacher.key, topics=["a.x"])
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    host = urlsplit(broker.url).netloc
    kinds: Counter[str] = Counter()

    @given(value=header_values, token=st.sampled_from([student, teacher.token, ADMIN_TOKEN]))
    @settings(max_examples=HEADER_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(value: bytes, token: str) -> None:
        headers = [(b"Authorization", f"Bearer {token}".encode()), (b"Last-Event-ID", value)]
        answer = _raw(broker.url, _request("GET", "/v1/topics/a.x/events", host, headers))
        assert answer is not None, value
        kinds[_check(answer)] += 1
        if answer.status == 200:
            assert answer.headers["content-type"].startswith("text/event-stream")

    check()
    logging.getLogger(__name__).warning("Last-Event-ID fuzz: %s", dict(kinds))
    _no_unhandled_errors(caplog)


def test_fuzzed_content_length_headers(fuzz_broker, caplog):
    broker, _app = fuzz_broker
    teacher = broker.teacher()
    _, student = broker.student()
    with broker.http(teacher.token) as http:
        pid, env, payload = factory.packet(teacher.key, topics=["a.x"])
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    host = urlsplit(broker.url).netloc
    boundary = "fuzzboundary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="envelope"; filename="e.json"\r\n'
    multipart = (part + "Content-Type: application/json\r\n\r\n").encode() + env + f"\r\n--{boundary}--\r\n".encode()
    routes = [  # method, path, token, content type, a body the route would take
        ("POST", "/v1/agents", ADMIN_TOKEN, "application/json", b'{"name": "fuzz-agent", "role": "student"}'),
        ("POST", f"/v1/packets/{pid}/reports", student, "application/json", b'{"verdict": "accepted"}'),
        ("POST", "/v1/packets", teacher.token, f"multipart/form-data; boundary={boundary}", multipart),
        ("POST", f"/v1/packets/{pid}/quarantine", ADMIN_TOKEN, "application/json", b'{"reason": "fuzz"}'),
        ("POST", "/dashboard/login", None, "application/x-www-form-urlencoded", b"token=nope"),
        ("GET", "/v1/topics", student, "application/json", b"{}"),
        ("POST", "/v1/agents", None, "application/json", b'{"name": "x", "role": "student"}'),
    ]
    kinds: Counter[str] = Counter()

    @given(data=st.data())
    @settings(max_examples=HEADER_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(data) -> None:
        method, path, token, media, usual = data.draw(st.sampled_from(routes))
        body = data.draw(st.one_of(st.just(usual), st.binary(max_size=300)))
        n = len(body)
        declared = data.draw(
            st.one_of(
                st.just(str(n).encode()),
                st.integers(0, n).map(lambda i: str(i).encode()),  # the rest reads as a next request
                st.integers(n + 1, n + 64).map(lambda i: str(i).encode()),  # the body falls short
                st.integers(10**6, 10**40).map(lambda i: str(i).encode()),  # over every limit
                header_values,
            )
        )
        headers = [(b"Content-Type", media.encode()), (b"Content-Length", declared)]
        if data.draw(st.booleans()):
            headers.append((b"Content-Length", data.draw(header_values)))
        chunked = data.draw(st.integers(0, 5)) == 0
        if chunked:  # the body is no chunk: a server that honours this waits for one
            headers.append((b"Transfer-Encoding", b"chunked"))
        if token is not None:
            headers.append((b"Authorization", f"Bearer {token}".encode()))
        lengths = [v.strip() for k, v in headers if k == b"Content-Length"]
        short = chunked or any(v.isdigit() and int(v) > n for v in lengths)
        answer = _raw(broker.url, _request(method, path, host, headers, body), wait=0.5 if short else 10.0)
        if answer is None:  # the server still waits for the body it was promised: right, when it was short
            assert short, (method, path, lengths, body[:60])
            kinds["waits"] += 1
            return
        kinds[_check(answer, login_page=path == "/dashboard/login")] += 1

    check()
    logging.getLogger(__name__).warning("Content-Length fuzz: %s", dict(kinds))
    _no_unhandled_errors(caplog)


def test_fuzzed_dashboard_forms_and_origins(fuzz_broker, caplog):
    broker, app = fuzz_broker
    teacher = broker.teacher()
    with broker.http(teacher.token) as http:
        pid, env, payload = factory.packet(teacher.key, topics=["a.x"])
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    admin = httpx.Client(base_url=broker.url, timeout=30)
    assert admin.post("/dashboard/login", data={"token": ADMIN_TOKEN}).status_code == 303
    session_csrf = csrf(admin)
    text = st.text(max_size=60)
    origins = st.one_of(st.none(), st.just(broker.url.encode()), st.just(b"null"), header_values)
    kinds: Counter[str] = Counter()

    @given(
        form=st.sampled_from(["login", "logout", "quarantine"]),
        origin=origins,
        referer=st.one_of(st.none(), st.just(f"{broker.url}/dashboard".encode()), header_values),
        fields=st.dictionaries(st.sampled_from(["token", "csrf", "action", "reason", "x"]), text, max_size=4),
        good_csrf=st.booleans(),
        action=st.one_of(st.sampled_from(["quarantine", "lift"]), text),
        raw=st.one_of(st.none(), st.binary(max_size=200)),
        target=st.one_of(st.just(pid), text.map(lambda s: quote(s, safe=""))),
    )
    @settings(max_examples=HEADER_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(form, origin, referer, fields, good_csrf, action, raw, target) -> None:
        headers = {k: v for k, v in (("Origin", origin), ("Referer", referer)) if v is not None}
        if form == "login":  # signed out; the throttle is tested elsewhere and would answer every fuzzed try
            app.state.sign_in_throttle.succeeded("127.0.0.1")
            client, path = httpx.Client(base_url=broker.url, timeout=30), "/dashboard/login"
        else:  # the admin's session; logout never gets the session's own token, so the session lives on
            client = admin
            path = "/dashboard/logout" if form == "logout" else f"/dashboard/packets/{target or pid}/quarantine"
            if form == "quarantine":
                fields = {**fields, "action": action} | ({"csrf": session_csrf} if good_csrf else {})
            elif fields.get("csrf") == session_csrf:
                fields.pop("csrf")
        try:
            if raw is not None:
                headers["Content-Type"] = b"application/x-www-form-urlencoded"
                r = client.post(path, content=raw, headers=headers)
            else:
                r = client.post(path, data=fields, headers=headers)
        except httpx.LocalProtocolError:  # a header value h11 will not send
            reject()
        finally:
            if client is not admin:
                client.close()
        kinds[_check(Answer(r.status_code, dict(r.headers), r.content), login_page=form == "login")] += 1

    try:
        check()
    finally:
        admin.close()
    logging.getLogger(__name__).warning("dashboard form fuzz: %s", dict(kinds))
    _no_unhandled_errors(caplog)


def test_a_publish_cut_short_is_no_unhandled_error(fuzz_broker, caplog):
    """Found by the Content-Length fuzz: a publish whose client hung up mid-body logged an unhandled error (a 500)."""
    broker, _app = fuzz_broker
    teacher = broker.teacher()
    host = urlsplit(broker.url).netloc
    headers = [
        (b"Authorization", f"Bearer {teacher.token}".encode()),
        (b"Content-Type", b"multipart/form-data; boundary=b"),
        (b"Content-Length", b"1000"),
    ]
    with socket.create_connection((urlsplit(broker.url).hostname, urlsplit(broker.url).port), timeout=10) as sock:
        sock.sendall(_request("POST", "/v1/packets", host, headers, b"--b\r\nContent-Disposition: form-data; "))
        time.sleep(0.3)  # the route is reading the body when the client goes
    time.sleep(0.5)
    _no_unhandled_errors(caplog)
    with broker.http(teacher.token) as http:  # and the broker carries on
        assert http.get("/v1/topics").status_code == 200
