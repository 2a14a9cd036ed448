"""Dashboard sessions against hostile visitors: server-side sessions, CSRF, Origin, throttling, headers."""

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import factory
import httpx
import pytest
from brokerkit import ADMIN_TOKEN
from test_dashboard import csrf

COOKIE = "m2kt_dashboard"


@contextmanager
def sign_in(broker, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=broker.url, timeout=30) as client:
        r = client.post("/dashboard/login", data={"token": token})
        assert r.status_code == 303, r.text
        yield client


def _packet(broker, **manifest_changes) -> str:
    teacher = broker.teacher()
    pid, env, payload = factory.packet(teacher.key, **manifest_changes)
    with broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    return pid


def test_the_cookie_is_an_opaque_session_not_the_token_and_sign_out_kills_it(broker):
    name, token = broker.student()
    with sign_in(broker, token) as client:
        value = client.cookies[COOKIE]
        assert token not in value and ADMIN_TOKEN not in value and len(value) >= 40
        assert client.get("/dashboard").status_code == 200
        r = client.post("/dashboard/logout", data={"csrf": csrf(client)})
        assert r.status_code == 303
    with httpx.Client(base_url=broker.url) as thief:  # a copy of the cookie taken before sign-out
        thief.cookies.set(COOKIE, value, domain="127.0.0.1", path="/dashboard")
        r = thief.get("/dashboard")
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/login"
        thief.cookies.set(COOKIE, token, domain="127.0.0.1", path="/dashboard")  # the token itself is no cookie
        assert thief.get("/dashboard").status_code == 303


def test_the_session_cookie_expires_and_says_so(broker):
    _name, token = broker.student()
    with httpx.Client(base_url=broker.url) as client:
        r = client.post("/dashboard/login", data={"token": token})
        cookie = r.headers["set-cookie"].lower()
        assert "max-age=" in cookie and "httponly" in cookie and "samesite=strict" in cookie


@pytest.mark.parametrize("broker", [{"dashboard_session_seconds": 1}], indirect=True)
def test_an_expired_session_signs_out(broker):
    _name, token = broker.student()
    with sign_in(broker, token) as client:
        value = client.cookies[COOKIE]
        time.sleep(1.5)
        client.cookies.set(COOKIE, value, domain="127.0.0.1", path="/dashboard")  # a browser might keep it
        assert client.get("/dashboard").status_code == 303


def test_rotating_or_revoking_the_token_ends_its_sessions(broker):
    name, token = broker.student()
    with sign_in(broker, token) as client, httpx.Client(base_url=broker.url) as http:
        assert client.get("/dashboard").status_code == 200
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert http.post(f"/v1/agents/{name}/token", headers=headers).status_code == 200
        assert client.get("/dashboard").status_code == 303


def test_forms_need_the_session_csrf_token_and_this_origin(broker):
    pid = _packet(broker)
    with sign_in(broker, ADMIN_TOKEN) as admin:
        token = csrf(admin)
        url = f"/dashboard/packets/{pid}/quarantine"
        attempts = [
            ({"action": "quarantine"}, {}),  # no CSRF token
            ({"action": "quarantine", "csrf": "x" * 43}, {}),  # a wrong one
            ({"action": "quarantine", "csrf": token}, {"Origin": "http://evil.example"}),
            ({"action": "quarantine", "csrf": token}, {"Origin": f"{broker.url.rsplit(':', 1)[0]}:1"}),  # another port
            ({"action": "quarantine", "csrf": token}, {"Origin": "null"}),
            ({"action": "quarantine", "csrf": token}, {"Referer": "http://evil.example/page"}),
            ({"action": "quarantine", "csrf": token}, {"Origin": "http://["}),  # not a URL: refused, not a 500
            ({"action": "quarantine", "csrf": token}, {"Origin": "garbage"}),
        ]
        for data, headers in attempts:
            r = admin.post(url, data=data, headers=headers)
            assert r.status_code == 403, (data, headers, r.status_code)
            assert r.json()["type"].endswith("/forbidden")
        with broker.http(ADMIN_TOKEN) as http:
            assert http.get(f"/v1/packets/{pid}").json()["status"] == "published"  # nothing happened
        r = admin.post(url, data={"action": "quarantine", "csrf": token}, headers={"Origin": broker.url})
        assert r.status_code == 303
        r = admin.post("/dashboard/logout", data={}, headers={"Origin": broker.url})
        assert r.status_code == 403  # signing someone out is a form too
    with httpx.Client(base_url=broker.url) as http:
        r = http.post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and COOKIE not in r.cookies


def test_failed_sign_ins_are_throttled_per_address(broker):
    _name, token = broker.student()
    with httpx.Client(base_url=broker.url) as http:
        codes = [http.post("/dashboard/login", data={"token": f"m2kt_guess{i}"}).status_code for i in range(10)]
        assert codes == [401] * 10
        r = http.post("/dashboard/login", data={"token": token})  # even the right token waits now
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and COOKIE not in r.cookies


def test_pages_carry_security_headers_and_reflect_no_request_text(broker):
    with httpx.Client(base_url=broker.url) as http:
        r = http.get("/dashboard/login", params={"error": "<script>alert(1)</script>Call 555-0100"})
        assert r.status_code == 200
        assert "555-0100" not in r.text and "alert(1)" not in r.text
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert http.get("/healthz").headers["x-content-type-options"] == "nosniff"


def test_a_manifest_field_of_an_unexpected_shape_does_not_break_the_packet_page(broker):
    pid = _packet(broker, task={"name": "modarith", "spec": "a string where an object was expected"})
    with sign_in(broker, ADMIN_TOKEN) as admin:
        page = admin.get(f"/dashboard/packets/{pid}")
        assert page.status_code == 200 and 'name="csrf"' in page.text
        assert re.search(r"Quarantine", page.text)
