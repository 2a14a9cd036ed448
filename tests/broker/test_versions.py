"""Versions and expiry in the signed statement: a non-increasing version is 409, an expired packet 422."""

from datetime import UTC, datetime, timedelta

import factory
import pytest
from test_publish import problem_type

TOPIC, OTHER = "modarith.parity", "modarith.range"


def _later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat(timespec="seconds").replace("+00:00", "Z")


def _publish(http, key, seed: int, **manifest):
    pid, env, payload = factory.packet(key, seed=seed, **manifest)
    return pid, http.post("/v1/packets", files=factory.files(env, payload))


def test_versions_must_increase_per_teacher_and_topic(broker):
    teacher, other = broker.teacher(), broker.teacher()
    with broker.http(teacher.token) as http:
        first, r = _publish(http, teacher.key, 0, version=2, expires=_later(days=1))
        assert r.status_code == 201, r.text
        for seed, version in ((1, 2), (2, 1)):  # equal, then lower: a rollback the broker refuses
            _, r = _publish(http, teacher.key, seed, version=version)
            assert r.status_code == 409 and problem_type(r) == "conflict", r.text
            assert "not above" in r.json()["detail"]
        _, r = _publish(http, teacher.key, 3, version=1, topics=[OTHER])  # another topic counts on its own
        assert r.status_code == 201, r.text
        _, r = _publish(http, teacher.key, 4, version=2, topics=[TOPIC, OTHER])  # above on every topic it names
        assert r.status_code == 409, r.text
        _, r = _publish(http, teacher.key, 5, version=3, topics=[TOPIC, OTHER])
        assert r.status_code == 201, r.text
        # The same statement again is still the same packet, not a stale version.
        _, r = _publish(http, teacher.key, 6)  # v1 teachers omit the version: still accepted
        assert r.status_code == 201, r.text
        assert http.get(f"/v1/packets/{first}").json()["statement"]["predicate"]["version"] == 2
    with broker.http(other.token) as http:
        _, r = _publish(http, other.key, 0, version=1)  # another teacher's versions are its own
        assert r.status_code == 201, r.text


def test_republishing_a_versioned_packet_is_idempotent(broker):
    teacher = broker.teacher()
    pid, env, payload = factory.packet(teacher.key, version=5)
    with broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 200 and r.json() == {"id": pid, "seq": 1, "topics": [TOPIC], "created": False}


@pytest.mark.parametrize(
    "label,change",
    [
        ("expired", {"expires": _later(seconds=-1)}),
        ("expires before created_at", {"created_at": _later(seconds=-10), "expires": _later(seconds=-20)}),
        ("expires without zone", {"expires": "2099-01-01T00:00:00"}),
        ("version zero", {"version": 0}),
        ("version string", {"version": "1"}),
        ("version bool", {"version": True}),
        ("version float", {"version": 1.0}),
    ],
)
def test_bad_versions_and_expiry_are_invalid_manifest(broker, label, change):
    teacher = broker.teacher()
    with broker.http(teacher.token) as http:
        _, r = _publish(http, teacher.key, 0, **change)
        assert r.status_code == 422 and problem_type(r) == "invalid-manifest", (label, r.text)
        assert http.get("/v1/topics").json() == []
