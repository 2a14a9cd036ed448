"""Hostile packets, from one table: each is refused with the protocol's exact problem type and stores nothing.

A new case is one line in ``CASES``: a label, a function of the test's context that returns
``(token, envelope, payload)``, and the expected status and problem type. Everything is
signed with `cryptography` directly (tests/factory.py), never with our signing code, so a
case can sign exactly the bytes it wants to lie with. After the whole table the broker must
hold no packet, no topic, no payload file and no log entry beyond the setup's.
"""

import base64
import json
import struct
from dataclasses import dataclass

import factory
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_publish import problem_type

LIMIT = 64 * 1024  # this broker's payload limit, so that "over the limit" stays cheap


@dataclass
class Ctx:
    token: str  # the calling teacher's
    key: Ed25519PrivateKey
    other_key: Ed25519PrivateKey  # another teacher's registered key
    revoked_key: Ed25519PrivateKey  # the caller's, revoked
    stranger: Ed25519PrivateKey  # registered to nobody


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def signed(stmt: bytes, key: Ed25519PrivateKey, keyid_of: Ed25519PrivateKey | None = None) -> bytes:
    """An envelope over exactly ``stmt``; ``keyid_of`` names another key's keyid than the signer's."""
    env = json.loads(factory.envelope_bytes(stmt, key))
    if keyid_of is not None:
        env["signatures"][0]["keyid"] = factory.keyid_of(keyid_of)
    return json.dumps(env).encode()


def good(c: Ctx, **manifest_changes) -> tuple[bytes, bytes]:
    tensors = factory.default_tensors()
    payload = factory.safetensors_bytes(tensors)
    manifest = {**factory.manifest(None, tensors), **manifest_changes}
    return signed(factory.statement_bytes(payload, manifest), c.key), payload


def with_statement(c: Ctx, mutate) -> tuple[str, bytes, bytes]:
    """A correctly signed envelope over the statement bytes ``mutate(json_text)`` returns."""
    tensors = factory.default_tensors()
    payload = factory.safetensors_bytes(tensors)
    text = factory.statement_bytes(payload, factory.manifest(None, tensors)).decode()
    stmt = mutate(text)
    return c.token, signed(stmt.encode() if isinstance(stmt, str) else stmt, c.key), payload


def with_payload(c: Ctx, payload: bytes, names=("C",)) -> tuple[str, bytes, bytes]:
    """A correctly signed packet whose (lying) payload matches its digest and names its tensors."""
    arrays = {n: None for n in names}
    manifest = factory.manifest(None, {}, tensors={n: {"role": "concepts"} for n in arrays})
    return c.token, signed(factory.statement_bytes(payload, manifest), c.key), payload


def raw_safetensors(header: bytes | dict, data: bytes = b"\0" * 32, declared: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared is None else declared) + raw + data


def f32(shape, start, end):
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


def envelope_part(c: Ctx, part: str, index: int) -> tuple[str, bytes, bytes]:
    """Flip one bit at ``index`` of the signature or of the signed statement, keeping the JSON valid."""
    env_bytes, payload = good(c)
    env = json.loads(env_bytes)
    if part == "sig":
        sig = base64.b64decode(env["signatures"][0]["sig"])
        env["signatures"][0]["sig"] = base64.b64encode(flip(sig, index % len(sig))).decode()
    else:
        stmt = base64.b64decode(env["payload"])
        at = stmt.index(factory.CREATED_AT[:10].encode()) + index  # inside the created_at digits: still valid JSON
        env["payload"] = base64.b64encode(flip(stmt, at)).decode()
    return c.token, json.dumps(env).encode(), payload


def mislabelled(c: Ctx) -> tuple[str, bytes, bytes]:
    env, payload = good(c)
    stmt = base64.b64decode(json.loads(env)["payload"])
    return c.token, signed(stmt, c.key, keyid_of=c.other_key), payload


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


LOOKALIKE = "m\u043edarith.parity"  # Cyrillic o

CASES = [
    # flipped bytes anywhere
    ("signature, first byte", lambda c: envelope_part(c, "sig", 0), 422, "bad-signature"),
    ("signature, middle byte", lambda c: envelope_part(c, "sig", 31), 422, "bad-signature"),
    ("signature, last byte", lambda c: envelope_part(c, "sig", 63), 422, "bad-signature"),
    ("statement byte", lambda c: envelope_part(c, "stmt", 3), 422, "bad-signature"),
    ("statement byte 2", lambda c: envelope_part(c, "stmt", 8), 422, "bad-signature"),
    ("payload, header length", lambda c: (c.token, good(c)[0], flip(good(c)[1], 0)), 422, "digest-mismatch"),
    ("payload, header", lambda c: (c.token, good(c)[0], flip(good(c)[1], 12)), 422, "digest-mismatch"),
    ("payload, last byte", lambda c: (c.token, good(c)[0], flip(good(c)[1], -1)), 422, "digest-mismatch"),
    # whose key
    ("another teacher's packet", lambda c: (c.token, *factory.packet(c.other_key)[1:]), 403, "unknown-key"),
    ("unknown keyid", lambda c: (c.token, *factory.packet(c.stranger)[1:]), 403, "unknown-key"),
    ("keyid of another teacher, signed by me", lambda c: mislabelled(c), 403, "unknown-key"),
    ("revoked keyid", lambda c: (c.token, *factory.packet(c.revoked_key)[1:]), 403, "unknown-key"),
    # size
    (
        "payload over the limit",
        lambda c: with_payload(c, raw_safetensors({"C": f32([1], 0, 4)}, b"\0" * (LIMIT + 8))),
        413,
        "payload-too-large",
    ),
    # safetensors headers that lie (signed and digest-correct, so the header check is what refuses them)
    (
        "header length past the end",
        lambda c: with_payload(c, raw_safetensors({"C": f32([2], 0, 8)}, declared=10**6)),
        422,
        "invalid-payload",
    ),
    ("huge declared header", lambda c: with_payload(c, raw_safetensors(b"{}", declared=2**40)), 422, "invalid-payload"),
    (
        "overlapping offsets",
        lambda c: with_payload(c, raw_safetensors({"C": f32([4], 0, 16), "D": f32([4], 8, 24)}), names=("C", "D")),
        422,
        "invalid-payload",
    ),
    (
        "offsets out of range",
        lambda c: with_payload(c, raw_safetensors({"C": f32([16], 0, 64)})),
        422,
        "invalid-payload",
    ),
    (
        "shape disagrees with offsets",
        lambda c: with_payload(c, raw_safetensors({"C": f32([3], 0, 16)})),
        422,
        "invalid-payload",
    ),
    (
        "unknown dtype",
        lambda c: with_payload(c, raw_safetensors({"C": {"dtype": "Q99", "shape": [4], "data_offsets": [0, 16]}})),
        422,
        "invalid-payload",
    ),
    ("header not JSON", lambda c: with_payload(c, raw_safetensors(b"{not json}   ")), 422, "invalid-payload"),
    (
        "tensor the manifest does not list",
        lambda c: with_payload(c, raw_safetensors({"C": f32([4], 0, 16)}), names=("X",)),
        422,
        "invalid-payload",
    ),
    # statements
    (
        "duplicate JSON keys",
        lambda c: with_statement(c, lambda t: t.replace('{"_type"', '{"_type": "x", "_type"', 1)),
        422,
        "invalid-manifest",
    ),
    (
        "deep nesting",
        lambda c: with_statement(
            c, lambda t: t.replace('"anchors": {"count": 3}', '"anchors": {"count": 3, "x": ' + nested(100000) + "}")
        ),
        422,
        "invalid-manifest",
    ),
    ("wrong type: packet_format", lambda c: (c.token, *good(c, packet_format="1")), 422, "invalid-manifest"),
    ("wrong type: topics", lambda c: (c.token, *good(c, topics="modarith.parity")), 422, "invalid-manifest"),
    (
        "wrong type: predicate",
        lambda c: with_statement(c, lambda t: json.dumps({**json.loads(t), "predicate": []})),
        422,
        "invalid-manifest",
    ),
    (
        "not UTF-8",
        lambda c: with_statement(c, lambda t: t.encode().replace(b"concept 0", b"concept \xff\xfe")),
        422,
        "invalid-manifest",
    ),
    # topic names
    (
        "topic with a slash",
        lambda c: (c.token, *factory.packet(c.key, topics=["modarith/parity"])[1:]),
        422,
        "invalid-manifest",
    ),
    (
        "topic with a backslash",
        lambda c: (c.token, *factory.packet(c.key, topics=["modarith\\parity"])[1:]),
        422,
        "invalid-manifest",
    ),
    ("topic ..", lambda c: (c.token, *factory.packet(c.key, topics=[".."])[1:]), 422, "invalid-manifest"),
    ("topic look-alike", lambda c: (c.token, *factory.packet(c.key, topics=[LOOKALIKE])[1:]), 422, "invalid-manifest"),
    ("topic over-long", lambda c: (c.token, *factory.packet(c.key, topics=["a" * 129])[1:]), 422, "invalid-manifest"),
    ("topic empty", lambda c: (c.token, *factory.packet(c.key, topics=[""])[1:]), 422, "invalid-manifest"),
]

TRAVERSALS = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", "a" * 64 + "%00", "0" * 63, "0" * 64 + "%2F..", "%2F" * 3]


@pytest.mark.parametrize("broker", [{"max_payload_bytes": LIMIT}], indirect=True)
def test_hostile_packets_are_refused_with_their_problem_type_and_store_nothing(broker):
    caller = broker.teacher("caller")
    other = broker.teacher("other")
    revoked = Ed25519PrivateKey.generate()
    with broker.admin as admin:
        from m2kt import keys

        added = admin.add_key("caller", keys.public_to_b64(revoked.public_key()))
        admin.revoke_key("caller", added["keyid"])
    ctx = Ctx(caller.token, caller.key, other.key, revoked, Ed25519PrivateKey.generate())
    files_before = sorted(p for p in broker.settings.data_dir.rglob("*") if p.is_file())
    with broker.http() as http:
        log_before = http.get("/v1/log", headers={"Authorization": f"Bearer {caller.token}"}).json()["items"]
        results = []
        for label, make, _status, _kind in CASES:
            token, env, payload = make(ctx)
            r = http.post(
                "/v1/packets", files=factory.files(env, payload), headers={"Authorization": f"Bearer {token}"}
            )
            results.append((label, r.status_code, problem_type(r)))
        assert results == [(label, status, kind) for label, _, status, kind in CASES]
        auth = {"Authorization": f"Bearer {caller.token}"}
        assert http.get("/v1/topics", headers=auth).json() == []
        assert http.get("/v1/log", headers=auth).json()["items"] == log_before
        for path in TRAVERSALS:
            for suffix in ("", "/envelope", "/payload", "/provenance", "/reports"):
                r = http.get(f"/v1/packets/{path}{suffix}", headers=auth)
                assert r.status_code in (404, 422), (path, suffix, r.status_code)
                assert problem_type(r) in ("not-found", "invalid-request"), (path, suffix)
    files_after = sorted(p for p in broker.settings.data_dir.rglob("*") if p.is_file())
    assert files_after == files_before  # no payload or envelope file, not even a temporary one


HUGE = str(2**63)  # one past the 64-bit seq range: found by the long fuzz pass as a 500 on SQLite


def test_cursors_beyond_64_bits_are_422_not_an_overflow(broker):
    teacher = broker.teacher()
    auth = {"Authorization": f"Bearer {teacher.token}"}
    with broker.http() as http:
        for path in (f"/v1/log?after={HUGE}", f"/v1/topics/a.x/packets?after={HUGE}", f"/v1/log?limit={HUGE}"):
            r = http.get(path, headers=auth)
            assert (r.status_code, problem_type(r)) == (422, "invalid-request"), path
        r = http.get("/v1/topics/a.x/events", headers={**auth, "Last-Event-ID": HUGE})
        assert (r.status_code, problem_type(r)) == (422, "invalid-request")
        assert http.get(f"/v1/log?after={2**63 - 1}", headers=auth).status_code == 200  # the largest is fine
