"""POST /v1/packets: the happy path, idempotence, and each refusal in protocol order."""

import base64
import hashlib
import json

import factory
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PROBLEM = "application/problem+json"


def problem_type(response) -> str:
    assert response.headers["content-type"].startswith(PROBLEM), response.text
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == response.status_code
    return body["type"].rsplit("/", 1)[-1]


def test_publish_then_read_back_byte_for_byte(broker):
    teacher = broker.teacher()
    pid, env, payload = factory.packet(teacher.key, topics=["modarith.parity", "modarith.range"])
    with broker.http(teacher.token) as http:
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 201, r.text
        body = r.json()
        assert body == {"id": pid, "seq": 1, "topics": ["modarith.parity", "modarith.range"], "created": True}
        assert http.get(f"/v1/packets/{pid}/envelope").content == env
        got = http.get(f"/v1/packets/{pid}/payload")
        assert got.content == payload
        assert got.headers["etag"] == f'"{hashlib.sha256(payload).hexdigest()}"'
        assert http.get(f"/v1/packets/{pid}/payload", headers={"If-None-Match": got.headers["etag"]}).status_code == 304
        info = http.get(f"/v1/packets/{pid}").json()
    assert info["teacher"] == teacher.name and info["status"] == "published" and info["seq"] == 1
    assert info["statement"]["predicate"]["task"] == {"name": "modarith"}
    assert info["reports"] == {"count": 0, "accepted": 0, "rolled_back": 0, "rejected": 0}
    assert info["received_at"].endswith("Z")


def test_republish_is_idempotent_and_keeps_the_first_envelope(broker):
    teacher = broker.teacher()
    pid, env, payload = factory.packet(teacher.key)
    with broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
        again = http.post("/v1/packets", files=factory.files(env, payload))
        assert again.status_code == 200 and again.json()["created"] is False and again.json()["seq"] == 1
        # Same statement, different envelope bytes (a second, unrelated signature added).
        other = json.loads(env)
        other["signatures"].append({"keyid": "0" * 64, "sig": base64.b64encode(b"x" * 64).decode()})
        third = http.post("/v1/packets", files=factory.files(json.dumps(other).encode(), payload))
        assert third.status_code == 200 and third.json() == {**again.json()}
        assert http.get(f"/v1/packets/{pid}/envelope").content == env
        assert http.get("/v1/log", params={"after": 0}).json()["items"][-1]["kind"] == "packet.publish"
        kinds = [e["kind"] for e in http.get("/v1/log").json()["items"]]
    assert kinds.count("packet.publish") == 1


def _tamper_statement(teacher, mutate):
    """Sign a statement produced by `mutate(statement_dict)`; return envelope and payload."""
    tensors = factory.default_tensors()
    payload = factory.safetensors_bytes(tensors)
    stmt = json.loads(factory.statement_bytes(payload, factory.manifest(None, tensors)))
    mutate(stmt)
    raw = stmt if isinstance(stmt, bytes) else json.dumps(stmt).encode()
    return factory.envelope_bytes(raw, teacher.key), payload


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def test_each_check_answers_its_own_problem_type(broker):
    teacher = broker.teacher()
    stranger = Ed25519PrivateKey.generate()
    pid, env, payload = factory.packet(teacher.key)
    env_obj = json.loads(env)

    def with_env(**changes):
        return json.dumps({**env_obj, **changes}).encode()

    good_sig = env_obj["signatures"][0]
    bad_sig = {
        "keyid": good_sig["keyid"],
        "sig": base64.b64encode(_flip(base64.b64decode(good_sig["sig"]), 5)).decode(),
    }
    cases = [
        ("not json", b"{nope", payload, "invalid-envelope"),
        ("foreign payloadType", with_env(payloadType="text/plain"), payload, "invalid-envelope"),
        ("payload not base64", with_env(payload="***"), payload, "invalid-envelope"),
        ("no signatures", with_env(signatures=[]), payload, "invalid-envelope"),
        ("statement not JSON", factory.envelope_bytes(b"\xff\xfe", teacher.key), payload, "invalid-manifest"),
        ("stranger's key", factory.packet(stranger)[1], payload, "unknown-key"),
        ("flipped signature", with_env(signatures=[bad_sig]), payload, "bad-signature"),
        ("flipped payload byte", env, _flip(payload, len(payload) - 1), "digest-mismatch"),
    ]
    with broker.http(teacher.token) as http:
        for label, e, p, expected in cases:
            r = http.post("/v1/packets", files=factory.files(e, p))
            assert (label, problem_type(r)) == (label, expected)
        assert http.get(f"/v1/packets/{pid}").status_code == 404
        assert http.get("/v1/topics").json() == []
        assert [e["kind"] for e in http.get("/v1/log").json()["items"]] == ["agent.create", "key.add"]


def test_statement_form_is_checked_before_the_key(broker):
    """A form error by an unknown key is invalid-manifest: the order of docs/protocol.md §2 decides."""
    teacher = broker.teacher()
    stranger = Ed25519PrivateKey.generate()
    payload = factory.safetensors_bytes(factory.default_tensors())
    stmt = factory.statement_bytes(payload, factory.manifest())
    bad_form = stmt.replace(b"payload.safetensors", b"other.bin")
    with broker.http(teacher.token) as http:
        r = http.post("/v1/packets", files=factory.files(factory.envelope_bytes(bad_form, stranger), payload))
        assert problem_type(r) == "invalid-manifest"
        # a key check precedes the signature check: a stranger's bad signature is unknown-key
        env = json.loads(factory.envelope_bytes(stmt, stranger))
        env["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()
        r = http.post("/v1/packets", files=factory.files(json.dumps(env).encode(), payload))
        assert problem_type(r) == "unknown-key"
        # digest before payload: a mismatching payload that is also not safetensors is digest-mismatch
        _, env2, _ = factory.packet(teacher.key)
        assert problem_type(http.post("/v1/packets", files=factory.files(env2, b"junk"))) == "digest-mismatch"


@pytest.mark.parametrize(
    "label,change,expected",
    [
        ("packet_format 2", {"packet_format": 2}, "invalid-manifest"),
        ("packet_format string", {"packet_format": "1"}, "invalid-manifest"),
        ("created_at without zone", {"created_at": "2026-11-23T09:00:00"}, "invalid-manifest"),
        ("no topics", {"topics": []}, "invalid-manifest"),
        ("topic with slash", {"topics": ["a/b"]}, "invalid-manifest"),
        ("topic look-alike", {"topics": ["modarith.pаrity"]}, "invalid-manifest"),
        ("topic too long", {"topics": ["a." + "b" * 127]}, "invalid-manifest"),
        ("17 topics", {"topics": [f"t{i}" for i in range(17)]}, "invalid-manifest"),
        ("concept topic not listed", {"concepts": [{"key": "k", "name": "n", "topic": "other"}]}, "invalid-manifest"),
        (
            "duplicate concept key",
            {"concepts": [{"key": "k", "name": "n", "topic": "modarith.parity"}] * 2},
            "invalid-manifest",
        ),
        ("negative anchors", {"anchors": {"count": -1}}, "invalid-manifest"),
        (
            "weights digest not hex",
            {
                "teacher": {
                    "agent": "a",
                    "model": {"architecture": "bert", "hidden_size": 4, "num_layers": 2, "weights_sha256": "xyz"},
                }
            },
            "invalid-manifest",
        ),
        ("parent not an id", {"parents": ["../../etc/passwd"]}, "invalid-manifest"),
        (
            "index names a missing tensor",
            {"tensors": {"C": {"role": "c"}, "R": {"role": "r"}, "X": {"role": "x"}}},
            "invalid-payload",
        ),
        ("index misses a tensor", {"tensors": {"C": {"role": "c"}}}, "invalid-payload"),
        ("tensor entry without role", {"tensors": {"C": {}, "R": {"role": "r"}}}, "invalid-manifest"),
    ],
)
def test_manifest_rules(broker, label, change, expected):
    teacher = broker.teacher()
    _, env, payload = factory.packet(teacher.key, **change)
    with broker.http(teacher.token) as http:
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 422 and problem_type(r) == expected, (label, r.text)
        assert http.get("/v1/topics").json() == []


def test_payload_size_limit_is_413_and_stores_nothing(database_url, tmp_path):
    from brokerkit import Broker, ServerThread, broker_settings

    settings = broker_settings(database_url, tmp_path / "data", max_payload_bytes=1024)
    with ServerThread(settings) as server:
        b = Broker(server.url, settings, "")
        teacher = b.teacher()
        big = {"C": factory.np.zeros((1024,), dtype=factory.np.float32)}
        payload = factory.safetensors_bytes(big)
        stmt = factory.statement_bytes(payload, factory.manifest(None, big))
        with b.http(teacher.token) as http:
            r = http.post("/v1/packets", files=factory.files(factory.envelope_bytes(stmt, teacher.key), payload))
            assert r.status_code == 413 and problem_type(r) == "payload-too-large"
            assert http.get("/v1/topics").json() == []
    leftovers = [
        p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.suffix != ".db" and "broker.db" not in p.name
    ]
    assert leftovers == []


def test_missing_parts_and_wrong_content_type_are_invalid_request(broker):
    teacher = broker.teacher()
    _, env, payload = factory.packet(teacher.key)
    with broker.http(teacher.token) as http:
        only_env = {"envelope": ("e.json", env, "application/json")}
        assert problem_type(http.post("/v1/packets", files=only_env)) == "invalid-request"
        assert problem_type(http.post("/v1/packets", json={"envelope": "x"})) == "invalid-request"
        twice = [("envelope", ("e", env)), ("envelope", ("e", env)), ("payload", ("p", payload))]
        assert problem_type(http.post("/v1/packets", files=twice)) == "invalid-request"


def test_revoked_key_publishes_nothing_more(broker):
    teacher = broker.teacher()
    _, env, payload = factory.packet(teacher.key, seed=1)
    with broker.admin as admin:
        admin.revoke_key(teacher.name, teacher.keyid)
        agent = admin.get_agent(teacher.name)
    assert agent["keys"] == [{"keyid": teacher.keyid, "public_key": agent["keys"][0]["public_key"], "revoked": True}]
    with broker.http(teacher.token) as http:
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 403 and problem_type(r) == "unknown-key"


def test_another_teachers_packet_reposted_is_unknown_key(broker):
    alice, mallory = broker.teacher(), broker.teacher()
    _, env, payload = factory.packet(alice.key)
    with broker.http(mallory.token) as http:
        r = http.post("/v1/packets", files=factory.files(env, payload))
        assert r.status_code == 403 and problem_type(r) == "unknown-key"


def test_key_rotation(broker):
    teacher = broker.teacher()
    new_key = Ed25519PrivateKey.generate()
    with broker.admin as admin:
        added = admin.add_key(
            teacher.name,
            factory.base64.b64encode(
                new_key.public_key().public_bytes(factory.Encoding.Raw, factory.PublicFormat.Raw)
            ).decode(),
        )
        admin.revoke_key(teacher.name, teacher.keyid)
    assert added["keyid"] == factory.keyid_of(new_key)
    factory.AGENTS[added["keyid"]] = teacher.name  # the new key signs for the same teacher
    _, env, payload = factory.packet(new_key)
    with broker.http(teacher.token) as http:
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
