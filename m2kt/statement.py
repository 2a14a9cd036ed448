"""The in-toto Statement v1 that a packet's envelope signs, and the packet id.

We build statements as RFC 8785 canonical JSON so the same manifest always gives
the same bytes, hence the same packet id; we *accept* any UTF-8 JSON a peer
signs, since the id is defined over the signed bytes, not over a re-encoding.
"""

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from m2kt.constants import PAYLOAD_NAME, PREDICATE_TYPE, STATEMENT_TYPE
from m2kt.errors import InvalidManifest
from m2kt.jsonutil import JSONError, canonical, loads_strict

__all__ = ["Statement", "build_statement", "packet_id", "parse_statement"]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Statement:
    payload_sha256: str  # lowercase hex
    predicate: dict[str, Any]
    raw: dict[str, Any]


def packet_id(statement: bytes) -> str:
    """Lowercase hex SHA-256 of the statement bytes."""
    return hashlib.sha256(statement).hexdigest()


def build_statement(payload_sha256: str, manifest: Mapping[str, Any]) -> bytes:
    return canonical(
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": PAYLOAD_NAME, "digest": {"sha256": payload_sha256}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": dict(manifest),
        }
    )


def parse_statement(data: bytes) -> Statement:
    """Check the statement's form (docs/protocol.md §2, 'statement form').

    Raises:
        InvalidManifest: the first rule of the form that is broken.
    """
    try:
        obj = loads_strict(data)
    except JSONError as exc:
        raise InvalidManifest(f"statement: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidManifest("statement must be a JSON object")
    if obj.get("_type") != STATEMENT_TYPE:
        raise InvalidManifest(f"statement _type must be {STATEMENT_TYPE!r}")
    if obj.get("predicateType") != PREDICATE_TYPE:
        raise InvalidManifest(f"predicateType must be {PREDICATE_TYPE!r}")
    subject = obj.get("subject")
    if not isinstance(subject, list) or len(subject) != 1 or not isinstance(subject[0], dict):
        raise InvalidManifest("statement must have exactly one subject")
    if subject[0].get("name") != PAYLOAD_NAME:
        raise InvalidManifest(f"the subject must be named {PAYLOAD_NAME!r}")
    digest = subject[0].get("digest")
    sha = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise InvalidManifest("the subject needs a hex sha256 digest")
    predicate = obj.get("predicate")
    if not isinstance(predicate, dict):
        raise InvalidManifest("predicate must be a JSON object")
    return Statement(payload_sha256=sha.lower(), predicate=predicate, raw=obj)
