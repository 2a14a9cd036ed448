"""Every route x {no token, malformed token, wrong token, student, teacher, admin}, from one table."""

import factory
import pytest

# route -> (method, path template, json body or None, the roles that pass authorization)
ANY = {"student", "teacher", "admin"}
ROUTES = [  # revocation last: it stops the teacher from publishing
    ("POST", "/v1/agents", {"name": "new-agent", "role": "student"}, {"admin"}),
    ("GET", "/v1/agents/{teacher}", None, ANY),
    ("POST", "/v1/agents/{teacher}/keys", {"public_key": "AAAA"}, {"admin"}),
    ("POST", "/v1/packets", "multipart", {"teacher"}),
    ("GET", "/v1/packets/{pid}", None, ANY),
    ("GET", "/v1/packets/{pid}/envelope", None, ANY),
    ("GET", "/v1/packets/{pid}/payload", None, ANY),
    ("GET", "/v1/packets/{pid}/provenance", None, ANY),
    ("GET", "/v1/topics", None, ANY),
    ("GET", "/v1/topics/a.x/packets", None, ANY),
    ("POST", "/v1/packets/{pid}/reports", {"verdict": "accepted"}, {"student"}),
    ("GET", "/v1/packets/{pid}/reports", None, ANY),
    ("POST", "/v1/packets/{pid}/quarantine", {"reason": "r"}, {"admin"}),
    ("DELETE", "/v1/packets/{pid}/quarantine", None, {"admin"}),
    ("GET", "/v1/log", None, ANY),
    ("PUT", "/v1/agents/{teacher}/head", {}, {"teacher"}),
    ("POST", "/v1/agents/{teacher}/keys/{keyid}/revoke", None, {"admin"}),
]
CALLERS = ["none", "malformed", "wrong", "student", "teacher", "admin"]


@pytest.mark.parametrize("broker", [{}], indirect=True)
def test_authorization_matrix(broker):
    teacher = broker.teacher("t1")
    _, student = broker.student("s1")
    pid, env, payload = factory.packet(teacher.key, topics=["a.x"])
    with broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    tokens = {
        "none": None,
        "malformed": "Basic abc",
        "wrong": "m2kt_" + "x" * 43,
        "student": student,
        "teacher": teacher.token,
        "admin": broker.settings.admin_token.get_secret_value(),
    }
    fmt = {"teacher": teacher.name, "keyid": teacher.keyid, "pid": pid}
    failures = []
    for method, template, body, allowed in ROUTES:
        path = template.format(**fmt)
        for caller in CALLERS:
            token = tokens[caller]
            headers = {}
            if caller == "malformed":
                headers["Authorization"] = token
            elif token:
                headers["Authorization"] = f"Bearer {token}"
            with broker.http() as http:
                kwargs = {"headers": headers}
                if body == "multipart":
                    kwargs["files"] = factory.files(env, payload)
                elif body is not None:
                    kwargs["json"] = body
                r = http.request(method, path, **kwargs)
            if caller in ("none", "malformed", "wrong"):
                expected = {401}
            elif caller not in allowed:
                expected = {403}
            else:
                expected = set(range(200, 300)) | {409, 422}  # past authorization; the body decides
            if r.status_code not in expected:
                failures.append((method, template, caller, r.status_code, r.text[:120]))
            if r.status_code in (401, 403):
                slug = r.json()["type"].rsplit("/", 1)[-1]
                if slug != {401: "unauthorized", 403: "forbidden"}[r.status_code]:
                    failures.append((method, template, caller, slug))
                if r.status_code == 401 and "bearer" not in r.headers.get("www-authenticate", "").lower():
                    failures.append((method, template, caller, "no WWW-Authenticate"))
    assert failures == []


def test_open_routes_and_unknown_paths(broker):
    with broker.http() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").json() == {"status": "ready"}
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and "m2kt_packets_published_total" in metrics.text
        missing = http.get("/v1/nothing-here")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")
        assert missing.json()["type"].endswith("not-found")
        assert http.get("/docs").status_code == 200
        assert "/v1/packets" in http.get("/openapi.json").json()["paths"]


def test_metrics_count_publishes_and_reports(broker):
    teacher = broker.teacher()
    _, student = broker.student()
    pid, env, payload = factory.packet(teacher.key)
    with broker.http(teacher.token) as http:
        http.post("/v1/packets", files=factory.files(env, payload))
        http.post("/v1/packets", files=factory.files(b"{", payload))
    with broker.http(student) as http:
        http.post(f"/v1/packets/{pid}/reports", json={"verdict": "rolled_back"})
    with broker.http() as http:
        text = http.get("/metrics").text
    assert "m2kt_packets_published_total 1.0" in text
    assert 'm2kt_publish_refused_total{type="invalid-envelope"} 1.0' in text
    assert 'm2kt_reports_total{verdict="rolled_back"} 1.0' in text
    assert "m2kt_publish_seconds_count 1.0" in text
