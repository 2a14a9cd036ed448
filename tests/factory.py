"""Test packets built *without* our signing code: PAE, JSON and base64 written out here.

A bug in `m2kt.dsse` cannot hide behind tests that use it to build their input.
"""

import base64
import hashlib
import io
import json
import struct
from datetime import UTC, datetime
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PAYLOAD_TYPE = "application/vnd.in-toto+json"

# One created_at for the whole test session: within the broker's freshness window, and the same in
# every call, so a packet built twice is the same packet.
CREATED_AT = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

# keyid -> the agent that registered it (tests/brokerkit.py fills it): a packet signed by a key
# names that agent as its teacher, as the broker requires.
AGENTS: dict[str, str] = {}


def keyid_of(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """A minimal safetensors writer (sorted names, contiguous little-endian data)."""
    dtypes = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64"}
    header: dict[str, Any] = {}
    data = io.BytesIO()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        start = data.tell()
        data.write(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        header[name] = {"dtype": dtypes[arr.dtype], "shape": list(arr.shape), "data_offsets": [start, data.tell()]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data.getvalue()


def manifest(
    topics: list[str] | None = None, arrays: dict[str, np.ndarray] | None = None, **overrides: Any
) -> dict[str, Any]:
    topics = ["modarith.parity"] if topics is None else topics
    arrays = arrays if arrays is not None else default_tensors()
    body: dict[str, Any] = {
        "packet_format": 1,
        "created_at": CREATED_AT,
        "teacher": {
            "agent": "teacher-a",
            "model": {"architecture": "bert", "hidden_size": 4, "num_layers": 2, "weights_sha256": "ab" * 32},
        },
        "task": {"name": "modarith"},
        "topics": topics,
        "concepts": [{"key": f"c{i}", "name": f"concept {i}", "topic": t} for i, t in enumerate(topics)],
        "anchors": {"count": 3},
        "tensors": {name: {"role": "concepts"} for name in arrays},
    }
    body.update(overrides)
    return body


def default_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"C": rng.standard_normal((2, 4)).astype(np.float32), "R": rng.standard_normal((3, 2, 4)).astype(np.float16)}


def statement_bytes(payload: bytes, predicate: dict[str, Any]) -> bytes:
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "payload.safetensors", "digest": {"sha256": hashlib.sha256(payload).hexdigest()}}],
        "predicateType": "https://m2kt.dev/knowledge-packet/v1",
        "predicate": predicate,
    }
    return json.dumps(statement, sort_keys=True).encode()


def envelope_bytes(statement: bytes, *signers: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> bytes:
    pae = f"DSSEv1 {len(payload_type.encode())} {payload_type} {len(statement)} ".encode() + statement
    sigs = [{"keyid": keyid_of(k), "sig": base64.b64encode(k.sign(pae)).decode()} for k in signers]
    env = {"payloadType": payload_type, "payload": base64.b64encode(statement).decode(), "signatures": sigs}
    return json.dumps(env).encode()


def packet(key: Ed25519PrivateKey, seed: int = 0, topics: list[str] | None = None, **overrides: Any):
    """(packet id, envelope bytes, payload bytes) signed by `key`."""
    tensors = default_tensors(seed)
    payload = safetensors_bytes(tensors)
    body = manifest(topics, tensors, **overrides)
    if "teacher" not in overrides:
        body["teacher"] = {**body["teacher"], "agent": AGENTS.get(keyid_of(key), "teacher-a")}
    stmt = statement_bytes(payload, body)
    return hashlib.sha256(stmt).hexdigest(), envelope_bytes(stmt, key), payload


def files(envelope: bytes, payload: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {
        "envelope": ("envelope.json", envelope, "application/json"),
        "payload": ("payload.safetensors", payload, "application/octet-stream"),
    }
