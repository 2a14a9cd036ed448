"""Teachers' signed heads: the broker stores a newer, valid one and serves it byte for byte."""

import json
from datetime import UTC, datetime, timedelta

import factory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_publish import problem_type

from m2kt import keys
from m2kt.head import TopicHead, build_head, open_head

TOPIC = "modarith.parity"


def _head(key, teacher: str, version: int, topics: dict[str, TopicHead], *, expires_in: float = 3600) -> dict:
    """A head signed without m2kt.dsse (tests/factory.py writes the PAE itself)."""
    now = datetime.now(UTC).replace(microsecond=0)
    statement = build_head(teacher, version, topics, now - timedelta(seconds=60), now + timedelta(seconds=expires_in))
    return json.loads(factory.envelope_bytes(statement, key))


def _published(http, key, seed: int, version: int) -> TopicHead:
    pid, env, payload = factory.packet(key, seed=seed, version=version)
    assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    return TopicHead(version, pid)


def test_a_newer_valid_head_is_stored_and_served(broker):
    teacher = broker.teacher()
    _, student = broker.student()
    with broker.http(teacher.token) as http:
        first = _published(http, teacher.key, 1, 3)
        r = http.put(f"/v1/agents/{teacher.name}/head", json=_head(teacher.key, teacher.name, 1, {TOPIC: first}))
        assert r.status_code == 201 and r.json()["stored"] is True, r.text
        second = _published(http, teacher.key, 2, 4)
        body = _head(teacher.key, teacher.name, 2, {TOPIC: second})
        assert http.put(f"/v1/agents/{teacher.name}/head", json=body).status_code == 201
        again = http.put(f"/v1/agents/{teacher.name}/head", json=body)
        assert again.status_code == 200 and again.json()["stored"] is False
    with broker.http(student) as http:
        served = http.get(f"/v1/agents/{teacher.name}/head")
        assert served.status_code == 200
        head = open_head(served.content, {teacher.keyid: teacher.key.public_key()})
        assert head.version == 2 and head.topics == {TOPIC: second} and head.teacher == teacher.name
        other = broker.teacher()
        assert problem_type(http.get(f"/v1/agents/{other.name}/head")) == "not-found"


def test_stale_foreign_and_false_heads_are_refused(broker):
    teacher, other = broker.teacher(), broker.teacher()
    stranger = Ed25519PrivateKey.generate()
    path = f"/v1/agents/{teacher.name}/head"
    with broker.http(teacher.token) as http:
        named = _published(http, teacher.key, 1, 5)
        assert http.put(path, json=_head(teacher.key, teacher.name, 7, {TOPIC: named})).status_code == 201
        cases = [
            ("older", _head(teacher.key, teacher.name, 6, {TOPIC: named}), 409, "conflict"),
            ("same version, other bytes", _head(teacher.key, teacher.name, 7, {}), 409, "conflict"),
            ("expired", _head(teacher.key, teacher.name, 8, {TOPIC: named}, expires_in=-1), 422, "invalid-manifest"),
            (
                "unknown packet",
                _head(teacher.key, teacher.name, 8, {TOPIC: TopicHead(5, "ab" * 32)}),
                422,
                "invalid-manifest",
            ),
            (
                "wrong version",
                _head(teacher.key, teacher.name, 8, {TOPIC: TopicHead(6, named.packet)}),
                422,
                "invalid-manifest",
            ),
            ("another teacher named", _head(teacher.key, other.name, 8, {}), 403, "forbidden"),
            ("stranger's key", _head(stranger, teacher.name, 8, {}), 403, "unknown-key"),
        ]
        for label, body, status, slug in cases:
            r = http.put(path, json=body)
            assert r.status_code == status and problem_type(r) == slug, (label, r.text)
    with broker.http(other.token) as http:
        r = http.put(path, json=_head(other.key, teacher.name, 9, {}))
        assert r.status_code == 403 and problem_type(r) == "forbidden"
    _, student = broker.student()
    with broker.http(student) as http:
        head = open_head(
            http.get(path).content, {teacher.keyid: keys.public_from_b64(keys.public_to_b64(teacher.key.public_key()))}
        )
        assert head.version == 7
        r = http.put(path, json=_head(teacher.key, teacher.name, 10, {}))
        assert r.status_code == 403 and problem_type(r) == "forbidden"
