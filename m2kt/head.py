"""A teacher's signed head: the latest version of each of its topics, valid for a short time.

This is TUF's timestamp role for one teacher. A broker that withholds a teacher's newer packets
(freeze) can still serve every old one validly signed; only a statement the teacher re-signs
often, naming what is newest and when that claim runs out, lets a student tell silence from
censorship. The head travels as a DSSE envelope like a packet, with its own predicate type, so
it can never be mistaken for a packet (and a packet never for a head):

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<topic>", "digest": {"sha256": "<latest packet id>"}}, ...],
     "predicateType": "https://m2kt.dev/teacher-head/v1",
     "predicate": {"teacher": str, "version": int >= 1, "issued_at": RFC 3339, "expires": RFC 3339,
                   "topics": {"<topic>": <latest packet version>, ...}}}

`version` orders heads (strictly increasing per teacher); `topics` and the subjects name the
same topics.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from m2kt import dsse
from m2kt.constants import HEAD_PREDICATE_TYPE, MAX_TOPICS_PER_HEAD, MAX_VERSION, PACKET_ID_PATTERN, STATEMENT_TYPE
from m2kt.errors import InvalidManifest
from m2kt.jsonutil import JSONError, canonical, loads_strict
from m2kt.manifest import is_topic

__all__ = ["Head", "TopicHead", "build_head", "open_head", "sign_head"]

_ID = re.compile(PACKET_ID_PATTERN)


@dataclass(frozen=True)
class TopicHead:
    version: int
    packet: str  # the packet id of that version


@dataclass(frozen=True)
class Head:
    teacher: str
    version: int
    issued_at: datetime
    expires: datetime
    topics: dict[str, TopicHead]
    keyid: str  # the trusted key that signed it
    signers: tuple[str, ...] = ()  # every distinct trusted key that signed


def _rfc3339(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def build_head(
    teacher: str, version: int, topics: Mapping[str, TopicHead], issued_at: datetime, expires: datetime
) -> bytes:
    """The head statement's bytes (canonical JSON)."""
    return canonical(
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": t, "digest": {"sha256": h.packet}} for t, h in sorted(topics.items())],
            "predicateType": HEAD_PREDICATE_TYPE,
            "predicate": {
                "teacher": teacher,
                "version": version,
                "issued_at": _rfc3339(issued_at),
                "expires": _rfc3339(expires),
                "topics": {t: h.version for t, h in sorted(topics.items())},
            },
        }
    )


def sign_head(statement: bytes, *signers: Ed25519PrivateKey) -> bytes:
    """The envelope bytes of a head statement signed by each key."""
    return dsse.sign(statement, *signers).to_json()


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VERSION:
        raise InvalidManifest(f"head {what} must be an integer from 1 to {MAX_VERSION}")
    return value


def _time(value: Any, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("z", "Z")) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidManifest(f"head {what} must be an RFC 3339 timestamp with its timezone")
    return when


def _parse(data: bytes, keyid: str, signers: tuple[str, ...] = ()) -> Head:
    try:
        obj = loads_strict(data)
    except JSONError as exc:
        raise InvalidManifest(f"head statement: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("_type") != STATEMENT_TYPE:
        raise InvalidManifest(f"head statement _type must be {STATEMENT_TYPE!r}")
    if obj.get("predicateType") != HEAD_PREDICATE_TYPE:
        raise InvalidManifest(f"head predicateType must be {HEAD_PREDICATE_TYPE!r}")
    pred, subject = obj.get("predicate"), obj.get("subject")
    if not isinstance(pred, dict) or not isinstance(pred.get("teacher"), str):
        raise InvalidManifest("head predicate must be an object naming its teacher")
    versions = pred.get("topics")
    if not isinstance(versions, dict) or not isinstance(subject, list) or len(subject) > MAX_TOPICS_PER_HEAD:
        raise InvalidManifest(f"head needs topics and subjects (at most {MAX_TOPICS_PER_HEAD})")
    packets: dict[str, str] = {}
    for entry in subject:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        name, sha = (
            entry.get("name") if isinstance(entry, dict) else None,
            digest.get("sha256") if isinstance(digest, dict) else None,
        )
        if not isinstance(name, str) or not is_topic(name) or not isinstance(sha, str) or not _ID.fullmatch(sha):
            raise InvalidManifest("each head subject is a topic with the sha256 (packet id) of its latest packet")
        packets[name] = sha
    if set(packets) != set(versions) or len(packets) != len(subject):
        raise InvalidManifest("head topics and subjects must name the same topics, once each")
    issued, expires = _time(pred.get("issued_at"), "issued_at"), _time(pred.get("expires"), "expires")
    if expires <= issued:
        raise InvalidManifest("head expires must be later than issued_at")
    topics = {t: TopicHead(_int(v, f"version of {t}"), packets[t]) for t, v in versions.items()}
    return Head(pred["teacher"], _int(pred.get("version"), "version"), issued, expires, topics, keyid, signers)


def open_head(envelope: bytes, trusted: Mapping[str, Ed25519PublicKey]) -> Head:
    """Verify a head envelope, then parse what was signed; verify first, then parse.

    Raises:
        InvalidEnvelope, UnknownKey, BadSignature, InvalidManifest: as for a packet.
    """
    verified = dsse.verify(dsse.Envelope.from_json(envelope), trusted)
    return _parse(verified.statement, verified.keyid, verified.keyids)
