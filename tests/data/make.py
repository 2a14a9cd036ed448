"""Regenerate the golden packet in tests/data/golden/ (run by hand; the files are committed).

Written with `cryptography`, `json`, `struct` and `hashlib` only, never with m2kt,
so the golden files pin the wire format independently of our implementation.
Ed25519 signatures are deterministic, so the fixed seed gives fixed bytes.
"""

import base64
import hashlib
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

OUT = Path(__file__).parent / "golden"
SEED = bytes(range(32))


def main() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    raw_pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    data = struct.pack("<4f", 1.0, -2.0, 0.5, 0.25)
    header = json.dumps({"C": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, separators=(",", ":"))
    hbytes = header.encode() + b" " * (-len(header) % 8)
    payload = struct.pack("<Q", len(hbytes)) + hbytes + data
    predicate = {
        "packet_format": 1,
        "created_at": "2026-11-23T00:00:00Z",
        "teacher": {
            "agent": "golden",
            "model": {"architecture": "bert", "hidden_size": 2, "num_layers": 1, "weights_sha256": "00" * 32},
        },
        "task": {"name": "golden"},
        "topics": ["golden.test"],
        "concepts": [{"key": "k0", "name": "first", "topic": "golden.test"}],
        "anchors": {"count": 0},
        "tensors": {"C": {"role": "concepts"}},
    }
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "payload.safetensors", "digest": {"sha256": hashlib.sha256(payload).hexdigest()}}],
            "predicateType": "https://m2kt.dev/knowledge-packet/v1",
            "predicate": predicate,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    ptype = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 " + str(len(ptype)).encode() + b" " + ptype + b" " + str(len(statement)).encode() + b" " + statement
    envelope = {
        "payloadType": ptype.decode(),
        "payload": base64.b64encode(statement).decode(),
        "signatures": [{"keyid": hashlib.sha256(raw_pub).hexdigest(), "sig": base64.b64encode(key.sign(pae)).decode()}],
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "payload.safetensors").write_bytes(payload)
    (OUT / "statement.json").write_bytes(statement)
    (OUT / "pae.bin").write_bytes(pae)
    (OUT / "envelope.json").write_bytes(json.dumps(envelope, indent=1).encode())
    (OUT / "public.b64").write_text(base64.b64encode(raw_pub).decode() + "\n")
    (OUT / "seed.hex").write_text(SEED.hex() + "\n")
    (OUT / "packet_id.txt").write_text(hashlib.sha256(statement).hexdigest() + "\n")


if __name__ == "__main__":
    main()
