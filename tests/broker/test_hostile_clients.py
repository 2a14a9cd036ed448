"""Hostile clients, from one table: each request is refused at the door with its problem type, stores
nothing, and leaves every read of the packet and report it aimed at answering 200.

A case is one line in ``CASES``: a label, a function of the context that returns the request
(method, path, and httpx keyword arguments), the expected status and problem type. The classes:
bodies over their limit (declared, chunked, unauthenticated), JSON that would break a later read
(depth, NaN, 1e400, huge integers, NUL, lone surrogates, duplicate keys), odd headers and paths,
and statements whose lists or numbers are out of bounds. Publishing cases are signed with
`cryptography` directly (tests/factory.py), so they lie exactly as written.
"""

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import factory
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_publish import problem_type

BODY_LIMIT = 32 * 1024  # the JSON body limit of this broker, so "over the limit" stays cheap
REPORT_LIMIT = 16 * 1024
PAYLOAD_LIMIT = 64 * 1024
ENVELOPE_LIMIT = 64 * 1024
SETTINGS = {
    "max_json_body_bytes": BODY_LIMIT,
    "max_report_bytes": REPORT_LIMIT,
    "max_payload_bytes": PAYLOAD_LIMIT,
    "max_envelope_bytes": ENVELOPE_LIMIT,
}


@dataclass
class Ctx:
    teacher: str  # the teacher's name
    teacher_token: str
    key: Ed25519PrivateKey
    student_token: str
    packet: str  # a stored packet every case aims at
    fresh: str  # a packet id nobody has reported on
    other: str = ""  # another teacher's name, token and key
    other_token: str = ""
    other_key: Ed25519PrivateKey | None = None


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chunks(total: int, size: int = 64 * 1024):
    """A body of ``total`` bytes sent chunked (no Content-Length), never held whole."""
    block = b" " * size
    for _ in range(total // size):
        yield block


def now(shift: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + shift).isoformat(timespec="microseconds").replace("+00:00", "Z")


def manifest(c: Ctx, seed: int = 0, **changes) -> tuple[dict, bytes]:
    tensors = factory.default_tensors(seed)
    body = factory.manifest(None, tensors, created_at=now())
    body["teacher"] = {**body["teacher"], "agent": c.teacher}
    body.update(changes)
    return body, factory.safetensors_bytes(tensors)


def publish(c: Ctx, statement: bytes, payload: bytes, signatures: int = 1, key=None) -> tuple:
    env = json.loads(factory.envelope_bytes(statement, key or c.key))
    env["signatures"] = env["signatures"] * signatures
    files = factory.files(json.dumps(env).encode(), payload)
    return "POST", "/v1/packets", {"files": files, "headers": bearer(c.teacher_token)}


def statement_text(c: Ctx, mutate) -> tuple:
    """A correctly signed statement whose JSON text is ``mutate(text)``: numbers and escapes as written."""
    body, payload = manifest(c)
    text = factory.statement_bytes(payload, body).decode()
    return publish(c, mutate(text).encode(), payload)


def with_manifest(c: Ctx, **changes) -> tuple:
    body, payload = manifest(c, **changes)
    return publish(c, factory.statement_bytes(payload, body), payload)


def report(c: Ctx, raw: bytes | str, packet: str | None = None, content_type="application/json") -> tuple:
    data = raw.encode() if isinstance(raw, str) else raw
    headers = {**bearer(c.student_token), "Content-Type": content_type}
    return "POST", f"/v1/packets/{packet or c.fresh}/reports", {"content": data, "headers": headers}


def admin(method: str, path: str, **kwargs) -> tuple:
    from brokerkit import ADMIN_TOKEN

    return method, path, {**kwargs, "headers": {**kwargs.get("headers", {}), **bearer(ADMIN_TOKEN)}}


def multipart(c: Ctx, boundary: str) -> tuple:
    headers = {**bearer(c.teacher_token), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    return "POST", "/v1/packets", {"headers": headers, "content": b"--b\r\n\r\n--b--\r\n"}


def get(c: Ctx, path: str) -> tuple:
    return "GET", path, {"headers": bearer(c.student_token)}


def events(c: Ctx, last_event_id: str | bytes) -> tuple:
    headers = {**bearer(c.student_token), "Last-Event-ID": last_event_id}
    return "GET", "/v1/topics/modarith.parity/events", {"headers": headers}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


AGENT = json.dumps({"name": "x", "role": "student"})
PARENT = "ab" * 32

CASES = [
    # limits, before any token check reads the body
    (
        "declared body over the limit, no token",
        lambda c: ("POST", "/v1/agents", {"content": b" " * (BODY_LIMIT + 1)}),
        413,
        "payload-too-large",
    ),
    (
        "chunked body over the limit, no token",
        lambda c: ("POST", "/v1/agents", {"content": chunks(4 * BODY_LIMIT)}),
        413,
        "payload-too-large",
    ),
    (
        "chunked report over the limit, no token",
        lambda c: ("POST", f"/v1/packets/{c.fresh}/reports", {"content": chunks(4 * REPORT_LIMIT)}),
        413,
        "payload-too-large",
    ),
    (
        "report over the report limit",
        lambda c: report(c, json.dumps({"verdict": "accepted", "detail": "x" * REPORT_LIMIT})),
        413,
        "payload-too-large",
    ),
    (
        "declared publish body over the limit, no token",
        lambda c: ("POST", "/v1/packets", {"content": b"-" * (PAYLOAD_LIMIT + ENVELOPE_LIMIT + 70 * 1024)}),
        413,
        "payload-too-large",
    ),
    (
        "publish with a huge ignored part, chunked",
        lambda c: (
            "POST",
            "/v1/packets",
            {
                "headers": {**bearer(c.teacher_token), "Content-Type": "multipart/form-data; boundary=b"},
                "content": (
                    p
                    for p in [
                        b'--b\r\nContent-Disposition: form-data; name="junk"\r\n\r\n',
                        *chunks(PAYLOAD_LIMIT + ENVELOPE_LIMIT + 128 * 1024),
                    ]
                ),
            },
        ),
        413,
        "payload-too-large",
    ),
    (
        "declared body on a GET over the limit",
        lambda c: ("GET", "/v1/topics", {"content": b" " * (BODY_LIMIT + 1), "headers": bearer(c.student_token)}),
        413,
        "payload-too-large",
    ),
    ("publish with a 100,000-character boundary", lambda c: multipart(c, "b" * 100_000), 422, "invalid-request"),
    ("publish with an empty boundary", lambda c: multipart(c, '""'), 422, "invalid-request"),
    ("publish with a boundary of DEL", lambda c: multipart(c, "\x7f"), 422, "invalid-request"),
    # JSON that parses in Python but would break a later read, in a report
    (
        "report nested 40 deep",
        lambda c: report(c, '{"verdict": "accepted", "metrics": {"x": ' + nested(40) + "}}"),
        422,
        "invalid-request",
    ),
    ("report with NaN", lambda c: report(c, '{"verdict": "accepted", "metrics": {"x": NaN}}'), 422, "invalid-request"),
    (
        "report with 1e400",
        lambda c: report(c, '{"verdict": "accepted", "metrics": {"x": 1e400}}'),
        422,
        "invalid-request",
    ),
    (
        "report with -Infinity",
        lambda c: report(c, '{"verdict": "accepted", "metrics": {"x": -Infinity}}'),
        422,
        "invalid-request",
    ),
    (
        "report with a 5,000-digit integer",
        lambda c: report(c, '{"verdict": "accepted", "metrics": {"x": ' + "9" * 5000 + "}}"),
        422,
        "invalid-request",
    ),
    (
        "report with 2**53",
        lambda c: report(c, '{"verdict": "accepted", "metrics": {"x": ' + str(2**53) + "}}"),
        422,
        "invalid-request",
    ),
    (
        "report with a lone surrogate",
        lambda c: report(c, '{"verdict": "accepted", "detail": "a\\ud800b"}'),
        422,
        "invalid-request",
    ),
    (
        "report with a lone surrogate key",
        lambda c: report(c, '{"verdict": "accepted", "metrics": {"\\udfff": 1}}'),
        422,
        "invalid-request",
    ),
    ("report with NUL", lambda c: report(c, '{"verdict": "accepted", "detail": "a\\u0000b"}'), 422, "invalid-request"),
    (
        "report with a NUL in a finding",
        lambda c: report(c, '{"verdict": "accepted", "safety_findings": [{"concept": "\\u0000"}]}'),
        422,
        "invalid-request",
    ),
    (
        "report with duplicate keys",
        lambda c: report(c, '{"verdict": "accepted", "verdict": "rejected"}'),
        422,
        "invalid-request",
    ),
    (
        "report that is not UTF-8",
        lambda c: report(c, b'{"verdict": "accepted", "detail": "\xff"}'),
        422,
        "invalid-request",
    ),
    (
        "report sent as text/plain with NaN",
        lambda c: report(c, '{"verdict": "accepted", "metrics": {"x": NaN}}', content_type="text/plain"),
        422,
        "invalid-request",
    ),
    (
        "quarantine reason with NUL",
        lambda c: admin("POST", f"/v1/packets/{c.packet}/quarantine", json={"reason": "bad\u0000"}),
        422,
        "invalid-request",
    ),
    (
        "agent name with NUL",
        lambda c: admin("POST", "/v1/agents", content=AGENT.replace('"x"', '"x\\u0000"')),
        422,
        "invalid-request",
    ),
    # odd paths, queries and headers: 4xx, never 500 or 503
    ("NUL in an agent path", lambda c: get(c, "/v1/agents/a%00b"), 404, "not-found"),
    ("NUL in a packet path", lambda c: get(c, f"/v1/packets/{c.packet}%00/reports"), 404, "not-found"),
    ("NUL in a key path", lambda c: admin("POST", f"/v1/agents/{c.teacher}/keys/%00/revoke"), 404, "not-found"),
    ("NUL in a topic path", lambda c: get(c, "/v1/topics/a%00b/packets"), 404, "not-found"),
    ("NUL in a query", lambda c: get(c, "/v1/log?after=%00"), 422, "invalid-request"),
    ("Last-Event-ID superscript two", lambda c: events(c, "²".encode()), 422, "invalid-request"),
    ("Last-Event-ID full-width digit", lambda c: events(c, "１".encode()), 422, "invalid-request"),
    ("Last-Event-ID negative", lambda c: events(c, "-1"), 422, "invalid-request"),
    ("Last-Event-ID with a tab", lambda c: events(c, "1\t2"), 422, "invalid-request"),
    ("Last-Event-ID with a plus", lambda c: events(c, "+1"), 422, "invalid-request"),
    # statements: bounded lists, finite numbers, Unicode a reader can encode again
    ("nine signatures", lambda c: publish_n(c, 9), 422, "invalid-envelope"),
    ("the same signature 300 times", lambda c: publish_n(c, 300), 422, "invalid-envelope"),
    ("257 parents", lambda c: with_manifest(c, parents=[f"{i:064x}" for i in range(257)]), 422, "invalid-manifest"),
    ("a repeated parent", lambda c: with_manifest(c, parents=[PARENT, PARENT]), 422, "invalid-manifest"),
    (
        "lone surrogate in a concept name",
        lambda c: statement_text(c, lambda t: t.replace('"concept 0"', '"concept \\ud800"')),
        422,
        "invalid-manifest",
    ),
    (
        "NUL in a concept name",
        lambda c: statement_text(c, lambda t: t.replace('"concept 0"', '"concept \\u0000"')),
        422,
        "invalid-manifest",
    ),
    (
        "5,000-digit integer in the statement",
        lambda c: statement_text(c, lambda t: t.replace('"count": 3', '"count": ' + "9" * 5000)),
        422,
        "invalid-manifest",
    ),
    (
        "NaN in the statement",
        lambda c: statement_text(c, lambda t: t.replace('"count": 3', '"count": 3, "x": NaN')),
        422,
        "invalid-manifest",
    ),
    # ownership and freshness
    (
        "a statement naming another teacher",
        lambda c: with_manifest(c, teacher={**manifest(c)[0]["teacher"], "agent": c.other}),
        403,
        "forbidden",
    ),
    ("another teacher re-signs my statement", lambda c: resigned(c), 403, "forbidden"),
    ("created_at in 1970", lambda c: with_manifest(c, created_at="1970-01-01T00:00:00Z"), 422, "invalid-manifest"),
    ("created_at in 9999", lambda c: with_manifest(c, created_at="9999-12-31T23:59:59Z"), 422, "invalid-manifest"),
    (
        "created_at two days ahead",
        lambda c: with_manifest(c, created_at=now(timedelta(days=2))),
        422,
        "invalid-manifest",
    ),
    (
        "older than my newest on the topic",
        lambda c: with_manifest(c, created_at=now(-timedelta(hours=1))),
        422,
        "invalid-manifest",
    ),
    (
        "1e400 in the statement",
        lambda c: statement_text(c, lambda t: t.replace('"count": 3', '"count": 3, "x": 1e400')),
        422,
        "invalid-manifest",
    ),
]


def resigned(c: Ctx) -> tuple:
    """My statement, signed again by another teacher and sent with its token."""
    statement, payload = _statement_and_payload(c, 5)
    method, path, kwargs = publish(c, statement, payload, key=c.other_key)
    return method, path, {**kwargs, "headers": bearer(c.other_token)}


def publish_n(c: Ctx, n: int) -> tuple:
    body, payload = manifest(c)
    return publish(c, factory.statement_bytes(payload, body), payload, signatures=n)


def _setup(broker) -> Ctx:
    teacher, other = broker.teacher(), broker.teacher()
    _student, student_token = broker.student()
    ctx = Ctx(teacher.name, teacher.token, teacher.key, student_token, "", "", other.name, other.token, other.key)
    with broker.http(teacher.token) as http:
        ids = []
        for seed in (0, 1):
            method, path, kwargs = publish(ctx, *_statement_and_payload(ctx, seed))
            r = http.request(method, path, **kwargs)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    ctx.packet, ctx.fresh = ids
    with broker.http(student_token) as http:
        r = http.post(f"/v1/packets/{ctx.packet}/reports", json={"verdict": "accepted", "metrics": {"a": 1.5}})
        assert r.status_code == 201, r.text
    return ctx


def _statement_and_payload(c: Ctx, seed: int) -> tuple[bytes, bytes]:
    body, payload = manifest(c, seed)
    return factory.statement_bytes(payload, body), payload


def _state(http, c: Ctx) -> dict:
    """Everything a refused request must leave as it was."""
    auth = bearer(c.student_token)
    return {
        "log": http.get("/v1/log", headers=auth).json(),
        "topics": http.get("/v1/topics", headers=auth).json(),
        "reports": [http.get(f"/v1/packets/{p}/reports", headers=auth).json() for p in (c.packet, c.fresh)],
        "packets": [http.get(f"/v1/packets/{p}", headers=auth).json() for p in (c.packet, c.fresh)],
        "agents": http.get(f"/v1/agents/{c.teacher}", headers=auth).json(),
    }


def _reads_answer(http, c: Ctx) -> None:
    for token in (c.student_token, c.teacher_token):
        for p in (c.packet, c.fresh):
            for suffix in ("", "/envelope", "/payload", "/provenance", "/reports"):
                r = http.get(f"/v1/packets/{p}{suffix}", headers=bearer(token))
                assert r.status_code == 200, (suffix, r.status_code, r.text[:200])
        for path in ("/v1/topics", "/v1/topics/modarith.parity/packets", "/v1/log", "/healthz", "/readyz"):
            assert http.get(path, headers=bearer(token)).status_code == 200, path


@pytest.mark.parametrize("broker", [SETTINGS], indirect=True)
def test_hostile_requests_are_refused_at_the_door_and_every_read_still_answers(broker):
    ctx = _setup(broker)
    files_before = sorted(p for p in broker.settings.data_dir.rglob("*") if p.is_file())
    with broker.http() as http:
        before = _state(http, ctx)
        results = []
        for label, make, _status, _kind in CASES:
            method, path, kwargs = make(ctx)
            r = http.request(method, path, **kwargs)
            results.append((label, r.status_code, problem_type(r)))
        assert results == [(label, status, kind) for label, _, status, kind in CASES]
        assert _state(http, ctx) == before
        _reads_answer(http, ctx)
    files_after = sorted(p for p in broker.settings.data_dir.rglob("*") if p.is_file())
    assert files_after == files_before


@pytest.mark.parametrize("broker", [SETTINGS], indirect=True)
def test_bodies_at_their_limits_are_still_accepted(broker):
    """The limits refuse what is over them, not what is at them."""
    ctx = _setup(broker)
    with broker.http(ctx.student_token) as http:
        body = {"verdict": "accepted", "metrics": {"deep": json.loads(nested(30)), "big": 2**53 - 1, "f": 1e300}}
        raw = json.dumps(body)
        body["detail"] = "é" * ((REPORT_LIMIT - len(raw.encode()) - 20) // 2)
        data = json.dumps(body, ensure_ascii=False).encode()
        assert len(data) <= REPORT_LIMIT
        r = http.post(f"/v1/packets/{ctx.fresh}/reports", content=data, headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        assert http.get(f"/v1/packets/{ctx.fresh}/reports").json()[0]["metrics"]["big"] == 2**53 - 1
    parents = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(256)]
    method, path, kwargs = with_manifest(ctx, parents=parents)
    with broker.http() as http:
        r = http.request(method, path, **kwargs)
        assert r.status_code == 201, r.text
        prov = http.get(f"/v1/packets/{r.json()['id']}/provenance", headers=bearer(ctx.student_token)).json()
        assert [p["id"] for p in prov["parents"]] == parents and not any(p["known"] for p in prov["parents"])
        env = json.loads(kwargs["files"]["envelope"][1])
        env["signatures"] = env["signatures"] * 8  # eight copies: at the cap, every one verified
        files = factory.files(json.dumps(env).encode(), kwargs["files"]["payload"][1])
        r = http.post("/v1/packets", files=files, headers=bearer(ctx.teacher_token))
        assert r.status_code == 200 and r.json()["created"] is False


def test_provenance_names_known_parents_with_their_teachers(broker):
    teacher = broker.teacher()
    ctx = Ctx(teacher.name, teacher.token, teacher.key, "", "", "")
    with broker.http(teacher.token) as http:
        method, path, kwargs = publish(ctx, *_statement_and_payload(ctx, 0))
        first = http.request(method, path, **kwargs).json()["id"]
        method, path, kwargs = with_manifest(ctx, parents=[first, PARENT])
        child = http.request(method, path, **kwargs).json()["id"]
        parents = http.get(f"/v1/packets/{child}/provenance").json()["parents"]
    assert parents == [
        {"id": first, "known": True, "teacher": teacher.name},
        {"id": PARENT, "known": False, "teacher": None},
    ]


def test_a_token_may_hold_only_so_many_event_streams(broker_streams):
    broker = broker_streams
    _name, token = broker.student()
    _other, other_token = broker.student()
    url = "/v1/topics/a.x/events"
    with broker.http(token) as http:
        first = http.stream("GET", url)
        second = http.stream("GET", url)
        r1, r2 = first.__enter__(), second.__enter__()
        try:
            assert r1.status_code == r2.status_code == 200
            r = http.get(url)
            assert (r.status_code, problem_type(r)) == (429, "too-many-requests")
            assert int(r.headers["retry-after"]) > 0
            with httpx.Client(base_url=broker.url, timeout=30) as page:  # the dashboard's stream counts too
                assert page.post("/dashboard/login", data={"token": token}).status_code == 303
                r = page.get("/dashboard/events")
                assert (r.status_code, problem_type(r)) == (429, "too-many-requests")
            with broker.http(other_token) as other:  # the cap is per token, not per broker
                with other.stream("GET", url) as r3:
                    assert r3.status_code == 200
        finally:
            first.__exit__(None, None, None)
        deadline = time.monotonic() + 10
        while True:  # the closed stream's slot comes back once the server sees it gone
            with http.stream("GET", url) as r4:
                if r4.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the slot never came back"
            time.sleep(0.2)
        second.__exit__(None, None, None)


@pytest.fixture
def broker_streams(database_url, tmp_path):
    from brokerkit import Broker, ServerThread, broker_settings

    settings = broker_settings(database_url, tmp_path / "data", max_streams_per_agent=2, sse_keepalive_seconds=0.2)
    with ServerThread(settings) as server:
        yield Broker(server.url, settings, "sqlite" if settings.is_sqlite else "postgresql")


def test_an_exhausted_pool_is_503_unavailable_with_retry_after_and_healthz_still_answers(database_url, tmp_path):
    from brokerkit import ADMIN_TOKEN, ServerThread, broker_settings

    settings = broker_settings(database_url, tmp_path / "data", worker_threads=1, pool_timeout_seconds=0.5)
    with ServerThread(settings) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        engine = server.server.config.app.state.sessions.engine
        assert engine.pool.size() == settings.worker_threads + 2  # the pool is sized to the threads
        held = [engine.connect() for _ in range(engine.pool.size())]  # every connection taken
        try:
            r = http.get("/v1/agents/nobody", headers=bearer(ADMIN_TOKEN))
            assert (r.status_code, problem_type(r)) == (503, "unavailable")
            assert int(r.headers["retry-after"]) > 0
            assert http.get("/healthz").status_code == 200
        finally:
            for conn in held:
                conn.close()
        r = http.get("/v1/agents/nobody", headers=bearer(ADMIN_TOKEN))
        assert (r.status_code, problem_type(r)) == (404, "not-found")


def test_provenance_is_a_fixed_number_of_queries_however_many_parents(broker):
    """One query for all parents, not one per parent: 256 parents cost what 1 does."""
    from test_dashboard import _counting_queries

    teacher = broker.teacher()
    ctx = Ctx(teacher.name, teacher.token, teacher.key, "", "", "")
    with broker.http(teacher.token) as http:
        known = []
        for seed in range(3):
            method, path, kwargs = publish(ctx, *_statement_and_payload(ctx, seed))
            known.append(http.request(method, path, **kwargs).json()["id"])
        counts = []
        for parents in ([known[0]], known + [hashlib.sha256(str(i).encode()).hexdigest() for i in range(253)]):
            method, path, kwargs = with_manifest(ctx, parents=parents)
            child = http.request(method, path, **kwargs).json()["id"]
            with _counting_queries() as statements:
                r = http.get(f"/v1/packets/{child}/provenance")
            assert r.status_code == 200 and len(r.json()["parents"]) == len(parents)
            counts.append(len(statements))
    assert counts[0] == counts[1], counts
