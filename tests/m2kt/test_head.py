"""m2kt.head: a teacher's signed head verifies first, then parses strictly; a packet is never a head."""

import json
from datetime import UTC, datetime, timedelta

import factory
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from m2kt.errors import InvalidManifest, UnknownKey
from m2kt.head import TopicHead, build_head, open_head

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
TRUSTED = {factory.keyid_of(KEY): KEY.public_key()}


def _signed(predicate_changes=None, subject=None, **statement_changes) -> bytes:
    statement = json.loads(build_head("t", 2, {"a.b": TopicHead(3, "ab" * 32)}, NOW, NOW + timedelta(hours=1)))
    statement["predicate"].update(predicate_changes or {})
    if subject is not None:
        statement["subject"] = subject
    statement.update(statement_changes)
    return factory.envelope_bytes(json.dumps(statement).encode(), KEY)


def test_a_head_round_trips():
    head = open_head(_signed(), TRUSTED)
    assert (head.teacher, head.version, head.expires - head.issued_at) == ("t", 2, timedelta(hours=1))
    assert head.topics == {"a.b": TopicHead(3, "ab" * 32)} and head.keyid == factory.keyid_of(KEY)


@pytest.mark.parametrize(
    "label,envelope",
    [
        ("a packet is not a head", factory.packet(KEY)[1]),
        ("version 0", _signed({"version": 0})),
        ("version true", _signed({"version": True})),
        ("topic version a string", _signed({"topics": {"a.b": "3"}})),
        ("topics and subjects differ", _signed({"topics": {"a.c": 3}})),
        ("subject not a packet id", _signed(subject=[{"name": "a.b", "digest": {"sha256": "xyz"}}])),
        ("subject twice", _signed(subject=[{"name": "a.b", "digest": {"sha256": "ab" * 32}}] * 2)),
        ("expires without zone", _signed({"expires": "2026-11-30T13:00:00"})),
        ("expires before issued", _signed({"expires": "2026-11-30T11:00:00Z"})),
        ("no teacher", _signed({"teacher": 7})),
    ],
)
def test_malformed_heads_are_invalid_manifest(label, envelope):
    with pytest.raises(InvalidManifest):
        open_head(envelope, TRUSTED)


def test_a_head_by_another_key_is_unknown_key():
    with pytest.raises(UnknownKey):
        open_head(_signed(), {factory.keyid_of(Ed25519PrivateKey.generate()): KEY.public_key()})
