"""Students' trust reports on a teacher, head changes in the event log, and the per-teacher trust overview."""

from test_heads import TOPIC, _head, _published
from test_publish import problem_type

from broker.services.eventlog import verify_chain


def _log(broker) -> list[dict]:
    with broker.admin as admin:
        return list(admin.iter_log())


def test_a_trust_report_is_logged_once_and_listed(broker):
    teacher = broker.teacher()
    student, token = broker.student()
    path = f"/v1/agents/{teacher.name}/trust-reports"
    body = {"reason": "withheld", "packet": "ab" * 32, "detail": "the head names version 2; the broker served 1"}
    with broker.http(token) as http:
        first = http.post(path, json=body)
        assert first.status_code == 201, first.text
        again = http.post(path, json=body)
        assert again.status_code == 200 and again.json() == first.json()
        removed = http.post(path, json={"reason": "revoked-key", "action": "removed", "packet": "cd" * 32})
        assert removed.status_code == 201
        listed = http.get(path).json()
    assert [(r["student"], r["reason"], r["action"], r["packet"]) for r in listed] == [
        (student, "withheld", "refused", "ab" * 32),
        (student, "revoked-key", "removed", "cd" * 32),
    ]
    entries = _log(broker)
    verify_chain(entries)
    mine = [e for e in entries if e["kind"] == "trust.report"]
    assert [e["subject"] for e in mine] == [teacher.name, teacher.name]
    assert [e["index"] for e in mine] == [r["index"] for r in listed]


def test_bad_trust_reports_are_problems_not_500s(broker):
    teacher = broker.teacher()
    _, token = broker.student()
    path = f"/v1/agents/{teacher.name}/trust-reports"
    with broker.http(token) as http:
        bad_bodies = [
            {"reason": "bored"},
            {"reason": "stale", "packet": "xyz"},
            {"reason": "stale", "extra": 1},
            {"reason": "stale", "action": "deleted"},
            {"reason": "stale", "detail": "x" * 5000},
            [],
        ]
        for bad in bad_bodies:
            r = http.post(path, json=bad)
            assert r.status_code == 422 and problem_type(r) == "invalid-request", (bad, r.text)
        assert problem_type(http.post("/v1/agents/nobody/trust-reports", json={"reason": "stale"})) == "not-found"
        student_name = broker.student()[0]
        assert problem_type(http.post(f"/v1/agents/{student_name}/trust-reports", json={"reason": "stale"})) == (
            "not-found"  # only teachers are reported on
        )
        assert problem_type(http.get("/v1/agents/nobody/trust")) == "not-found"
    for who in (teacher.token, broker.settings.admin_token.get_secret_value()):
        with broker.http(who) as http:
            assert http.post(path, json={"reason": "stale"}).status_code == 403
    with broker.http() as http:
        assert http.post(path, json={"reason": "stale"}).status_code == 401


def test_the_overview_shows_head_versions_revoked_keys_and_who_reported(broker):
    teacher = broker.teacher()
    student, token = broker.student()
    with broker.http(teacher.token) as http:
        one = _published(http, teacher.key, 1, 1)
        two = _published(http, teacher.key, 2, 2)
        assert (
            http.put(
                f"/v1/agents/{teacher.name}/head", json=_head(teacher.key, teacher.name, 4, {TOPIC: two})
            ).status_code
            == 201
        )
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)
    with broker.http(token) as http:
        for reason in ("rollback", "rollback", "withheld"):
            packet = one.packet if reason == "rollback" else two.packet
            detail = f"{reason} {len(http.get(f'/v1/agents/{teacher.name}/trust-reports').json())}"
            report = {"reason": reason, "packet": packet, "detail": detail}
            assert http.post(f"/v1/agents/{teacher.name}/trust-reports", json=report).status_code == 201
        overview = http.get(f"/v1/agents/{teacher.name}/trust").json()
    assert overview["head"]["version"] == 4 and overview["head"]["expired"] is False
    assert overview["topics"] == [
        {"topic": TOPIC, "packets": 2, "latest_version": 2, "head_version": 2, "head_packet": two.packet}
    ]
    assert overview["revoked_keys"] == [teacher.keyid] and overview["keys"][0]["revoked_at"] is not None
    assert [(r["student"], r["reason"], r["action"], r["reports"]) for r in overview["reports"]] == [
        (student, "rollback", "refused", 2),
        (student, "withheld", "refused", 1),
    ]
    heads = [e for e in _log(broker) if e["kind"] == "head.put"]
    assert [e["subject"] for e in heads] == [teacher.name]
