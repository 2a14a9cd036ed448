"""Topics, pagination, quarantine, reports, provenance and the event log."""

import hashlib
import json

import factory
import rfc8785


def _publish(broker, teacher, seed, topics):
    pid, env, payload = factory.packet(teacher.key, seed=seed, topics=topics)
    with broker.http(teacher.token) as http:
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 201, r.text
    return pid


def test_topic_pages_follow_seq_and_limits(broker):
    teacher = broker.teacher()
    ids = [_publish(broker, teacher, i, ["a.x"] if i % 2 else ["a.x", "b.y"]) for i in range(7)]
    _, student = broker.student()
    with broker.http(student) as http:
        page = http.get("/v1/topics/a.x/packets", params={"limit": 3}).json()
        assert [p["seq"] for p in page["items"]] == [1, 2, 3] and page["next_after"] == 3
        page = http.get("/v1/topics/a.x/packets", params={"after": 3, "limit": 3}).json()
        assert [p["id"] for p in page["items"]] == ids[3:6]
        page = http.get("/v1/topics/a.x/packets", params={"after": 6, "limit": 3}).json()
        assert [p["seq"] for p in page["items"]] == [7] and page["next_after"] == 7
        empty = http.get("/v1/topics/a.x/packets", params={"after": 7}).json()
        assert empty == {"items": [], "next_after": 7}
        assert [p["seq"] for p in http.get("/v1/topics/b.y/packets").json()["items"]] == [1, 3, 5, 7]
        assert http.get("/v1/topics/a.x/packets", params={"limit": 10_000}).status_code == 200
        for bad in ({"limit": 0}, {"after": -1}, {"limit": "many"}):
            r = http.get("/v1/topics/a.x/packets", params=bad)
            assert r.status_code == 422 and r.json()["type"].endswith("invalid-request")
        assert http.get("/v1/topics/no.such/packets").json() == {"items": [], "next_after": 0}
        assert http.get("/v1/topics").json() == [
            {"topic": "a.x", "packets": 7, "last_seq": 7},
            {"topic": "b.y", "packets": 4, "last_seq": 7},
        ]
        summary = http.get("/v1/topics/a.x/packets").json()["items"][0]
        # the protocol's six fields, plus key_revoked (docs/protocol-choices.md)
        assert set(summary) == {"id", "seq", "teacher", "topics", "status", "received_at", "key_revoked"}


def test_limit_above_500_counts_as_500(broker):
    teacher = broker.teacher()
    for i in range(3):
        _publish(broker, teacher, i, ["a.x"])
    with broker.http(teacher.token) as http:
        assert len(http.get("/v1/topics/a.x/packets", params={"limit": 501}).json()["items"]) == 3
        assert len(http.get("/v1/log", params={"limit": 9999}).json()["items"]) == 2 + 3


def test_quarantine_hides_from_students_only(broker):
    teacher = broker.teacher()
    keep, hide = _publish(broker, teacher, 1, ["a.x"]), _publish(broker, teacher, 2, ["a.x"])
    _, student = broker.student()
    with broker.admin as admin:
        assert admin.quarantine(hide, "label-flipped concepts")["status"] == "quarantined"
        assert admin.quarantine(hide, "again")["status"] == "quarantined"  # idempotent
    with broker.http(student) as http:
        assert [p["id"] for p in http.get("/v1/topics/a.x/packets").json()["items"]] == [keep]
        assert http.get("/v1/topics").json() == [{"topic": "a.x", "packets": 1, "last_seq": 1}]
        assert http.get(f"/v1/packets/{hide}").json()["status"] == "quarantined"  # readable by id
        r = http.post(f"/v1/packets/{hide}/quarantine", json={"reason": "x"})
        assert r.status_code == 403 and r.json()["type"].endswith("forbidden")
    with broker.http(teacher.token) as http:
        assert len(http.get("/v1/topics/a.x/packets").json()["items"]) == 2
        assert http.get("/v1/topics").json()[0]["packets"] == 2
    with broker.admin as admin:
        assert admin.lift_quarantine(hide)["status"] == "published"
    with broker.http(student) as http:
        assert len(http.get("/v1/topics/a.x/packets").json()["items"]) == 2
        kinds = [e["kind"] for e in http.get("/v1/log").json()["items"]]
    assert kinds.count("packet.quarantine") == 1 and kinds.count("packet.quarantine.lift") == 1
    with broker.http(factory_admin_token(broker)) as http:
        assert http.post(f"/v1/packets/{keep}/quarantine", json={}).status_code == 422
        assert http.post(f"/v1/packets/{'0' * 64}/quarantine", json={"reason": "x"}).status_code == 404


def test_topic_counts_agree_with_the_topic_pages_for_every_role_under_quarantine(broker):
    """GET /v1/topics counts from the topic index and subtracts what the caller may not see: it must
    agree with the topic pages (another query) when the newest, a middle, a multi-topic and a topic's
    only packet are quarantined."""
    teacher = broker.teacher()
    layout = [["q.a"], ["q.a", "q.b"], ["q.b"], ["q.a"], ["q.c"], ["q.b", "q.a"], ["q.b"], ["q.a"]]
    ids = [_publish(broker, teacher, 40 + i, topics) for i, topics in enumerate(layout)]
    with broker.admin as admin:
        for i in (1, 4, 7, 6):  # multi-topic; q.c's only packet; newest of q.a; newest of q.b
            admin.quarantine(ids[i], "test")
    _, student = broker.student()
    for token in (student, teacher.token):
        with broker.http(token) as http:
            expected = []
            for topic in ("q.a", "q.b", "q.c"):
                seqs = [p["seq"] for p in http.get(f"/v1/topics/{topic}/packets").json()["items"]]
                if seqs:
                    expected.append({"topic": topic, "packets": len(seqs), "last_seq": max(seqs)})
            assert http.get("/v1/topics").json() == expected
    assert [t["topic"] for t in expected] == ["q.a", "q.b", "q.c"]  # the teacher sees quarantined ones
    with broker.http(student) as http:
        assert http.get("/v1/topics").json() == [
            {"topic": "q.a", "packets": 3, "last_seq": 6},
            {"topic": "q.b", "packets": 2, "last_seq": 6},
        ]


def factory_admin_token(broker) -> str:
    return broker.settings.admin_token.get_secret_value()


def test_reports_one_per_student_and_counted(broker):
    teacher = broker.teacher()
    pid = _publish(broker, teacher, 1, ["a.x"])
    (s1, t1), (s2, t2) = broker.student(), broker.student()
    body = {
        "verdict": "accepted",
        "metrics": {"agreement": 0.91},
        "student_model": {"architecture": "gpt2"},
        "safety_findings": [],
        "detail": "ok",
    }
    with broker.http(t1) as http:
        r = http.post(f"/v1/packets/{pid}/reports", json=body)
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["student"] == s1 and first["verdict"] == "accepted" and first["metrics"] == {"agreement": 0.91}
        again = http.post(f"/v1/packets/{pid}/reports", json={**body, "verdict": "rejected"})
        assert again.status_code == 409 and again.json()["type"].endswith("conflict")
        for bad in ({"verdict": "maybe"}, {}, {"verdict": "accepted", "metrics": []}, {"verdict": "accepted", "x": 1}):
            r = http.post(f"/v1/packets/{pid}/reports", json=bad)
            assert r.status_code == 422 and r.json()["type"].endswith("invalid-request"), bad
        assert http.post(f"/v1/packets/{'1' * 64}/reports", json=body).status_code == 404
    with broker.http(t2) as http:
        assert http.post(f"/v1/packets/{pid}/reports", json={**body, "verdict": "rolled_back"}).status_code == 201
    with broker.http(teacher.token) as http:
        assert http.post(f"/v1/packets/{pid}/reports", json=body).status_code == 403
        reports = http.get(f"/v1/packets/{pid}/reports").json()
        assert [(r["student"], r["verdict"]) for r in reports] == [(s1, "accepted"), (s2, "rolled_back")]
        assert http.get(f"/v1/packets/{pid}").json()["reports"] == {
            "count": 2,
            "accepted": 1,
            "rolled_back": 1,
            "rejected": 0,
        }


def test_log_chain_recomputes_independently(broker):
    """Recompute every hash with hashlib + the rfc8785 package, not with broker code."""
    teacher = broker.teacher()
    pid = _publish(broker, teacher, 1, ["a.x"])
    _, student = broker.student()
    with broker.http(student) as http:
        http.post(f"/v1/packets/{pid}/reports", json={"verdict": "accepted"})
    with broker.admin as admin:
        admin.quarantine(pid, "check")
        admin.revoke_key(teacher.name, teacher.keyid)
    with broker.http(student) as http:
        entries, after = [], 0
        while True:
            page = http.get("/v1/log", params={"after": after, "limit": 2}).json()
            if not page["items"]:
                assert page["next_after"] == after
                break
            entries += page["items"]
            after = page["next_after"]
        provenance = http.get(f"/v1/packets/{pid}/provenance").json()
        reports = http.get(f"/v1/packets/{pid}/reports").json()
    assert [e["index"] for e in entries] == list(range(1, len(entries) + 1))
    assert [e["kind"] for e in entries] == [
        "agent.create",
        "key.add",
        "packet.publish",
        "agent.create",
        "report",
        "packet.quarantine",
        "key.revoke",
    ]
    prev = "0" * 64
    for e in entries:
        assert set(e) == {"index", "kind", "subject", "body_sha256", "prev_hash", "hash", "at"}
        assert e["prev_hash"] == prev
        unsigned = {k: v for k, v in e.items() if k != "hash"}
        assert hashlib.sha256(bytes.fromhex(prev) + rfc8785.dumps(unsigned)).hexdigest() == e["hash"]
        prev = e["hash"]
    # Provenance: the packet's entries, whose bodies hash to what the chain says.
    assert [e["kind"] for e in provenance["log"]] == ["packet.publish", "report", "packet.quarantine"]
    for e in provenance["log"]:
        body = provenance["bodies"][str(e["index"])]
        assert hashlib.sha256(rfc8785.dumps(body)).hexdigest() == e["body_sha256"]
    assert provenance["bodies"][str(provenance["log"][1]["index"])] == reports[0]
    assert provenance["teacher"] == teacher.name
    assert provenance["key"]["keyid"] == teacher.keyid and provenance["key"]["revoked"] is True


def test_provenance_lists_parents(broker):
    teacher = broker.teacher()
    parent = _publish(broker, teacher, 1, ["a.x"])
    unknown = "f" * 64
    pid, env, payload = factory.packet(teacher.key, seed=2, parents=[parent, unknown])
    with broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
        prov = http.get(f"/v1/packets/{pid}/provenance").json()
    assert prov["parents"] == [
        {"id": parent, "known": True, "teacher": teacher.name},
        {"id": unknown, "known": False, "teacher": None},
    ]


def test_agents_registry(broker):
    teacher = broker.teacher("alice")
    name, token = broker.student("bob")
    with broker.http(token) as http:
        body = http.get("/v1/agents/alice").json()
        assert body["name"] == "alice" and body["role"] == "teacher"
        assert body["keys"][0]["keyid"] == teacher.keyid and body["keys"][0]["revoked"] is False
        assert http.get("/v1/agents/bob").json() == {"name": "bob", "role": "student", "keys": []}
        assert http.get("/v1/agents/nobody").status_code == 404
    with broker.http(factory_admin_token(broker)) as http:
        taken = http.post("/v1/agents", json={"name": "alice", "role": "student"})
        assert taken.status_code == 409 and taken.json()["type"].endswith("conflict")
        for bad in (
            {"name": "x", "role": "admin"},
            {"name": "../x", "role": "student"},
            {"name": "t", "role": "teacher"},
            {"name": "t", "role": "teacher", "public_key": "not base64!"},
            {"name": "t", "role": "teacher", "public_key": factory.base64.b64encode(b"short").decode()},
            {"name": "s", "role": "student", "public_key": body["keys"][0]["public_key"]},
        ):
            r = http.post("/v1/agents", json=bad)
            assert r.status_code == 422 and r.json()["type"].endswith("invalid-request"), (bad, r.text)
        same_key = http.post(
            "/v1/agents", json={"name": "carol", "role": "teacher", "public_key": body["keys"][0]["public_key"]}
        )
        assert same_key.status_code == 409
        assert http.get("/v1/agents/carol").status_code == 404  # nothing half-made


def test_statement_in_packet_is_the_signed_one(broker):
    teacher = broker.teacher()
    pid = _publish(broker, teacher, 3, ["a.x"])
    with broker.http(teacher.token) as http:
        env = json.loads(http.get(f"/v1/packets/{pid}/envelope").content)
        stmt = factory.base64.b64decode(env["payload"])
        assert hashlib.sha256(stmt).hexdigest() == pid
        assert http.get(f"/v1/packets/{pid}").json()["statement"] == json.loads(stmt)
