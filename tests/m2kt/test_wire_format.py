"""The wire format against golden files made without m2kt (tests/data/make.py)."""

import base64
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import load as st_load

from m2kt import dsse, keys, payload
from m2kt.errors import BadSignature, DigestMismatch, InvalidEnvelope, InvalidManifest, InvalidPayload, UnknownKey
from m2kt.jsonutil import JSONError, loads_strict
from m2kt.packet import build_packet, open_packet
from m2kt.statement import packet_id

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def golden_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(golden("seed.hex").decode().strip()))


def trusted() -> dict:
    pub = keys.public_from_b64(golden("public.b64").decode().strip())
    return {keys.keyid(pub): pub}


def test_pae_matches_golden():
    assert dsse.pae("application/vnd.in-toto+json", golden("statement.json")) == golden("pae.bin")
    assert dsse.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"  # lengths count bytes


def test_signing_reproduces_the_golden_envelope():
    env = dsse.sign(golden("statement.json"), golden_key())
    expected = json.loads(golden("envelope.json"))
    assert json.loads(env.to_json()) == expected


def test_golden_packet_opens_with_its_id():
    opened = open_packet(golden("envelope.json"), golden("payload.safetensors"), trusted())
    assert opened.id == golden("packet_id.txt").decode().strip() == packet_id(golden("statement.json"))
    assert opened.manifest.topics == ["golden.test"]
    assert opened.tensors["C"].shape == (2, 2)


@pytest.mark.parametrize("part", ["envelope", "payload"])
def test_every_flipped_byte_is_refused(part):
    """Flip each byte of the envelope (a sample of positions) or payload (all): never accepted."""
    env, pay = golden("envelope.json"), golden("payload.safetensors")
    target = env if part == "envelope" else pay
    positions = range(len(target)) if part == "payload" else range(0, len(target), 3)
    accepted = []
    for i in positions:
        flipped = bytearray(target)
        flipped[i] ^= 0x01
        args = (bytes(flipped), pay) if part == "envelope" else (env, bytes(flipped))
        try:
            open_packet(*args, trusted())
        except (InvalidEnvelope, InvalidManifest, UnknownKey, BadSignature, DigestMismatch, InvalidPayload):
            continue
        accepted.append(i)
    # A flip inside JSON whitespace or a key-name's case can leave the *meaning* signed: only
    # whitespace positions of the envelope may survive (they are not signed bytes).
    if part == "envelope":
        assert all(env[i : i + 1] in (b" ", b"\n") for i in accepted), accepted
    else:
        assert accepted == []


def test_verify_rules():
    statement = golden("statement.json")
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(UnknownKey):
        dsse.verify(dsse.sign(statement, stranger), trusted())
    # a stranger's extra signature is ignored; the trusted one must verify
    assert dsse.verify(dsse.sign(statement, stranger, golden_key()), trusted()).statement == statement
    env = dsse.sign(statement, golden_key())
    bad = dsse.Envelope(env.payload_type, statement + b" ", env.signatures)
    with pytest.raises(BadSignature):
        dsse.verify(bad, trusted())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "payload": "e30=", "signatures": []}',
        b'{"payloadType": "application/vnd.in-toto+json", "payload": "e30", "signatures": [SIG]}',
        b'{"payloadType": "application/vnd.in-toto+json", "payload": "e3-_", "signatures": [SIG]}',
        b'{"payloadType": "text/plain", "payload": "e30=", "signatures": [{"keyid": "a", "sig": "AA=="}]}',
        b"[]",
        b"\xff",
        b'{"payloadType": 1}',
    ],
)
def test_envelope_parsing_is_strict(raw):
    raw = raw.replace(b"SIG", b'{"keyid": "a", "sig": "AA=="}')
    with pytest.raises(InvalidEnvelope):
        dsse.Envelope.from_json(raw)


def test_strict_json():
    for bad in (b'{"a":1,"a":2}', b"[NaN]", b'{"a": Infinity}', b"[" * 100 + b"]" * 100, b"[" * 100000, b"\xc3("):
        with pytest.raises(JSONError):
            loads_strict(bad)
    assert loads_strict(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


@pytest.mark.parametrize(
    "bad",
    [
        b"[1e400]",
        b"[-1e400]",
        b"[" + b"9" * 5000 + b"]",
        b"[" + str(2**63).encode() + b"]",
        b'["a\\u0000b"]',
        b'["\\ud800"]',
        b'{"\\udfff": 1}',
        b'["x\\udc00y"]',
    ],
)
def test_strict_json_refuses_what_a_reader_could_not_store_or_encode(bad):
    with pytest.raises(JSONError):
        loads_strict(bad)


def test_strict_json_limits_are_inclusive_and_adjustable():
    assert loads_strict(str(2**63 - 1).encode()) == 2**63 - 1
    assert loads_strict(b'[1e308, -0.0, "\\ud83d\\ude00"]') == [1e308, -0.0, "\U0001f600"]  # a surrogate pair is fine
    with pytest.raises(JSONError):
        loads_strict(str(2**53).encode(), max_int=2**53 - 1)
    assert loads_strict(b"[[[]]]", max_depth=3) == [[[]]]
    with pytest.raises(JSONError):
        loads_strict(b"[[[[]]]]", max_depth=3)


def test_an_envelope_with_too_many_signatures_is_refused_before_any_is_checked():
    sig = {"keyid": "a", "sig": "not base64 at all!"}  # never decoded: the count is checked first
    raw = json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": [sig] * 9})
    with pytest.raises(InvalidEnvelope, match="at most 8"):
        dsse.Envelope.from_json(raw.encode())


def _st(header: dict, data: bytes, pad: bytes = b"") -> bytes:
    raw = json.dumps(header).encode() + pad
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "blob,reason",
    [
        (b"\x01\x02", "shorter"),
        (struct.pack("<Q", 10**12) + b"{}", "exceeds"),
        (struct.pack("<Q", 100) + b"{}", "past the end"),
        (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b""), "covers"),
        (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "do not hold"),
        (_st({"a": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype"),
        (
            _st(
                {
                    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]},
                },
                b"\0" * 6,
            ),
            "overlaps",
        ),
        (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "gap"),
        (_st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""), "shape"),
        (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "data_offsets"),
        (_st({"__metadata__": {"a": 1}}, b""), "__metadata__"),
        (struct.pack("<Q", 2) + b"[]", "start with"),
        (struct.pack("<Q", 14) + b'{"a":1, "a":2}', "duplicate"),
    ],
)
def test_safetensors_header_lies_are_refused(blob, reason):
    with pytest.raises(InvalidPayload, match=reason):
        payload.read_header_bytes(blob)


def test_header_reader_agrees_with_the_safetensors_library():
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal((3, 5)).astype(np.float16),
        "b": np.arange(7, dtype=np.int64),
        "c": np.zeros((0, 4), dtype=np.float32),
    }
    blob = payload.save_numpy(tensors)
    header = payload.read_header_bytes(blob)
    loaded = st_load(blob)
    assert {k: (v.shape, v.nbytes) for k, v in loaded.items()} == {k: (h.shape, h.nbytes) for k, h in header.items()}


def test_build_then_open_round_trip():
    key = Ed25519PrivateKey.generate()
    manifest = json.loads(golden("statement.json"))["predicate"]
    built = build_packet(manifest, {"C": np.ones((2, 2), dtype=np.float32)}, key)
    opened = open_packet(built.envelope, built.payload, {keys.keyid(key.public_key()): key.public_key()})
    assert opened.id == built.id == packet_id(built.statement)
    assert base64.b64decode(json.loads(built.envelope)["payload"]) == built.statement


def test_keys_are_saved_0600_and_loaded(tmp_path):
    key = keys.generate()
    pub_path = keys.save_keypair(key, tmp_path / "teacher.key")
    assert os.stat(tmp_path / "teacher.key").st_mode & 0o777 == 0o600
    assert keys.keyid(keys.load_public(pub_path)) == keys.keyid(key.public_key())
    assert keys.keyid(keys.load_private(tmp_path / "teacher.key").public_key()) == keys.keyid(key.public_key())
    os.chmod(tmp_path / "teacher.key", 0o644)
    with pytest.raises(Exception, match="0600"):
        keys.load_private(tmp_path / "teacher.key")
