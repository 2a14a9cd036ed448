"""The dashboard's pages over real HTTP: sign-in, what each role sees, quarantine, provenance.

Browser tests (headless Chromium, live updates, screenshots) are the next stage of the
dashboard issue; these check the server side of every page with seeded data.
"""

import re
from contextlib import contextmanager

import factory
import httpx
from brokerkit import ADMIN_TOKEN
from test_heads import _head, _published


@contextmanager
def _session(broker, token: str):
    with httpx.Client(base_url=broker.url, timeout=30) as client:
        r = client.post("/dashboard/login", data={"token": token})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard" in cookie
        yield client


def csrf(client) -> str:
    """The session's CSRF token, as the pages' forms carry it."""
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/dashboard").text).group(1)


def _seed(broker):
    teacher = broker.teacher("dash-teacher")
    student_name, student = broker.student("dash-student")
    ids = []
    with broker.http(teacher.token) as http:
        for i, topics in enumerate((["dash.a"], ["dash.a", "dash.b"], ["dash.b"])):
            pid, env, payload = factory.packet(teacher.key, seed=i, topics=topics)
            assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
            ids.append(pid)
    with broker.http(student) as http:
        for pid, verdict in zip(ids, ("accepted", "rolled_back", "rejected"), strict=True):
            body = {"verdict": verdict, "metrics": {"mean_agreement": 0.8}, "detail": f"{verdict} here"}
            assert http.post(f"/v1/packets/{pid}/reports", json=body).status_code == 201
    return teacher, student, ids


def test_unauthenticated_visitors_are_sent_to_sign_in(broker):
    with httpx.Client(base_url=broker.url) as http:
        for path in ("/dashboard", "/dashboard/packets/" + "0" * 64, "/dashboard/packets/x/provenance"):
            r = http.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/dashboard/login", path
        r = http.post("/dashboard/login", data={"token": "m2kt_not-a-token"})
        assert r.status_code == 401 and "not valid" in r.text
        http.cookies.set("m2kt_dashboard", "forged", domain="127.0.0.1", path="/dashboard")
        assert http.get("/dashboard").status_code == 303
        assert http.get("/dashboard/login").status_code == 200


def test_pages_render_seeded_data_and_quarantine_hides_a_packet_from_students(broker):
    teacher, student, ids = _seed(broker)
    with _session(broker, student) as s, _session(broker, ADMIN_TOKEN) as a:
        page = s.get("/dashboard").text
        assert "dash.a" in page and "dash.b" in page and ids[0][:16] in page
        assert "dash-teacher" in page and "33%" in page  # one of three reports accepted
        assert "<svg" in page and "dash-student ← dash-teacher" in page

        packet = a.get(f"/dashboard/packets/{ids[1]}").text
        for expected in ("concept 0", "dash.b", "rolled_back here", teacher.keyid, "Quarantine"):
            assert expected in packet, expected
        assert "<td><code>C</code></td>" in packet and "<td><code>R</code></td>" in packet  # tensors
        assert "Quarantine" not in s.get(f"/dashboard/packets/{ids[1]}").text  # no admin form for students

        prov = s.get(f"/dashboard/packets/{ids[1]}/provenance").text
        assert "hash chain verified" in prov and "packet.publish" in prov

        r = a.post(
            f"/dashboard/packets/{ids[1]}/quarantine", data={"action": "quarantine", "reason": "bad", "csrf": csrf(a)}
        )
        assert r.status_code == 303
        assert ids[1][:16] not in s.get("/dashboard").text  # gone from the student's view
        assert s.get(f"/dashboard/packets/{ids[1]}").status_code == 404
        assert ids[1][:16] in a.get("/dashboard").text  # still there for the admin
        r = s.post(f"/dashboard/packets/{ids[0]}/quarantine", data={"action": "quarantine", "csrf": csrf(s)})
        assert r.status_code == 403

        a.post(f"/dashboard/packets/{ids[1]}/quarantine", data={"action": "lift", "csrf": csrf(a)})
        assert ids[1][:16] in s.get("/dashboard").text
    with broker.http(student) as http:  # the API agrees with what the pages did
        assert http.get(f"/v1/packets/{ids[1]}").json()["status"] == "published"


def test_the_teacher_page_shows_head_versions_revoked_keys_and_students_trust_reports(broker):
    teacher = broker.teacher("trust-teacher")
    student_name, student = broker.student("trust-student")
    with broker.http(teacher.token) as http:
        named = _published(http, teacher.key, 1, 3)
        head = _head(teacher.key, teacher.name, 5, {"modarith.parity": named})
        assert http.put(f"/v1/agents/{teacher.name}/head", json=head).status_code == 201
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)
    with broker.http(student) as http:
        for reason in ("rollback", "withheld"):
            body = {"reason": reason, "packet": named.packet, "detail": f"<b>{reason}</b>"}
            assert http.post(f"/v1/agents/{teacher.name}/trust-reports", json=body).status_code == 201
    with _session(broker, student) as s:
        assert '<a href="/dashboard/teachers/trust-teacher">' in s.get("/dashboard").text
        page = s.get("/dashboard/teachers/trust-teacher")
        assert page.status_code == 200
        text = page.text
        for expected in (
            "version</dt><dd>5",
            "(current)",
            "modarith.parity",
            teacher.keyid,
            "revoked 20",
            named.packet[:16],
            student_name,
            "rollback",
            "withheld",
            "refused",
        ):
            assert expected in text, expected
        assert "<b>" not in text  # a student's detail is not shown, let alone as markup
        assert s.get("/dashboard/teachers/nobody").status_code == 404
        assert s.get(f"/dashboard/teachers/{student_name}").status_code == 404  # students are not teachers
    with httpx.Client(base_url=broker.url) as anonymous:
        assert anonymous.get("/dashboard/teachers/trust-teacher").status_code == 303


def test_the_dashboard_is_not_in_the_api_schema(broker):
    with broker.http() as http:
        assert not any(p.startswith("/dashboard") for p in http.get("/openapi.json").json()["paths"])


def test_a_packet_published_while_the_page_is_open_reaches_its_topics_table(broker):
    teacher = broker.teacher("live-teacher")
    _, student = broker.student("live-student")
    with _session(broker, student) as s:
        assert "live.topic" not in s.get("/dashboard").text
        with s.stream("GET", "/dashboard/events", timeout=httpx.Timeout(10, read=20)) as events:
            lines = events.iter_lines()
            assert next(lines) == ": stream open"
            with broker.http(teacher.token) as http:
                _, env, payload = factory.packet(teacher.key, topics=["live.topic"])
                assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
            got = [line for line, _ in zip(lines, range(3), strict=False) if line]  # skip the blank separator
            assert got == ["event: changed", "data: 1"], got
        rows = s.get("/dashboard/fragments/topics").text
        assert "live.topic" in rows and "<tr>" in rows
    with httpx.Client(base_url=broker.url) as anonymous:
        assert anonymous.get("/dashboard/events").status_code == 303


def test_a_quarantine_while_the_page_is_open_updates_the_students_topics_table(broker):
    teacher = broker.teacher("q-teacher")
    _, student = broker.student("q-student")
    with broker.http(teacher.token) as http:
        pid, env, payload = factory.packet(teacher.key, topics=["live.quarantined"])
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    with _session(broker, student) as s:
        assert "live.quarantined" in s.get("/dashboard/fragments/topics").text
        with s.stream("GET", "/dashboard/events", timeout=httpx.Timeout(10, read=20)) as events:
            lines = events.iter_lines()
            assert next(lines) == ": stream open"
            with broker.admin as admin:
                admin.quarantine(pid, "caught by a student")
            got = [line for line, _ in zip(lines, range(3), strict=False) if line]
            assert got[0] == "event: changed", got
        assert "live.quarantined" not in s.get("/dashboard/fragments/topics").text


@contextmanager
def _counting_queries():
    """Every SQL statement the in-process broker runs while the block is open (the test's own client sends none)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", count)


def _queries_per_page(session, pages):
    out = {}
    for name, path in pages.items():
        with _counting_queries() as statements:
            assert session.get(path).status_code == 200, path
        out[name] = len(statements)
    return out


def test_each_page_is_a_fixed_number_of_queries_however_many_packets_and_reports(broker):
    """No query per row (N+1): the count per page is the same with 3 packets and with 60 more and their reports."""
    teacher, student, ids = _seed(broker)
    pages = {
        "index": "/dashboard",
        "fragment": "/dashboard/fragments/topics",
        "packet": f"/dashboard/packets/{ids[0]}",
        "provenance": f"/dashboard/packets/{ids[0]}/provenance",
    }
    with _session(broker, ADMIN_TOKEN) as admin:
        few = _queries_per_page(admin, pages)
        more = []
        with broker.http(teacher.token) as pub, broker.http(student) as rep:
            for i in range(60):  # more than one page (50) of packets
                pid, env, payload = factory.packet(teacher.key, seed=100 + i, topics=[f"dash.n{i % 7}"])
                assert pub.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
                more.append(pid)
                body = {"verdict": "accepted", "metrics": {"mean_agreement": 0.7}}
                assert rep.post(f"/v1/packets/{pid}/reports", json=body).status_code == 201
        for _ in range(5):  # more students' reports on the packet whose page we load
            with broker.http(broker.student()[1]) as rep:
                body = {"verdict": "rolled_back", "metrics": {"mean_agreement": 0.4}}
                assert rep.post(f"/v1/packets/{ids[0]}/reports", json=body).status_code == 201
        many = _queries_per_page(admin, pages)
        assert min(few.values()) > 0  # the listener saw the broker's queries at all
        assert many == few, (few, many)
        page = admin.get("/dashboard").text
        assert more[-1][:16] in page and more[0][:16] not in page  # the newest page, not every packet
        assert admin.get(f"/dashboard/packets/{ids[0]}").text.count("rolled_back") >= 5


def test_pages_show_the_students_verdicts_times_to_the_second_and_a_labelled_chart(broker):
    """A rolled-back packet says so next to its status; no page shows microseconds; the chart says what it plots."""
    _, student, ids = _seed(broker)
    microseconds = re.compile(r"\d\d:\d\d:\d\d\.\d{6}")
    with _session(broker, student) as s:
        page = s.get("/dashboard").text
        assert "published; rolled back by 1 student</td>" in page and "published; accepted by 1 student</td>" in page
        assert '<tr class="rolled_back">' in page
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page) and not microseconds.search(page)
        chart = page[page.index("<svg") : page.index("</svg>")]
        for label in ("student ← teacher", "mean probe agreement with the teacher", "0.800 (3 reports)", "<title>"):
            assert label in chart, label
        assert ">0.0<" in chart and ">1.0<" in chart and "chance" in chart
        packet = s.get(f"/dashboard/packets/{ids[1]}").text
        assert "published; rolled back by 1 student</dd>" in packet and "rolled back</td>" in packet
        assert not microseconds.search(packet)
        assert not microseconds.search(s.get(f"/dashboard/packets/{ids[1]}/provenance").text)
        assert not microseconds.search(s.get("/dashboard/fragments/topics").text)
