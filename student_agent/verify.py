"""The student's own check of a packet before it trains on anything.

The key comes from the broker's agent registry (the publishing teacher's non-revoked keys) and,
when the student keeps a trust list, only from keys on it. Then `open_packet` runs the protocol's
checks (envelope, signature, digest, payload, manifest) and `Knowledge.from_packet` the
packet-format contract. Every failure is a `Rejection` with a reason that goes into the report.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from m2kt import keys
from m2kt.client import BrokerClient
from m2kt.errors import M2KTError
from m2kt.packet import OpenedPacket, open_packet
from student_agent.knowledge import Knowledge, PacketContentError

__all__ = ["Rejection", "Verified", "fetch_and_verify", "trusted_keys_of"]


class Rejection(Exception):
    """Why a packet was not trained on: ``reason`` is a problem slug or ``untrusted-key`` etc."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Verified:
    opened: OpenedPacket
    knowledge: Knowledge


def trusted_keys_of(client: BrokerClient, teacher: str, trust_list: Collection[str]) -> dict[str, Ed25519PublicKey]:
    """The teacher's non-revoked registry keys, narrowed to the trust list when one is set."""
    agent = client.get_agent(teacher)
    if agent.get("role") != "teacher":
        raise Rejection("untrusted-key", f"publisher {teacher!r} is not a teacher")
    found: dict[str, Ed25519PublicKey] = {}
    for entry in agent.get("keys", []):
        if entry.get("revoked"):
            continue
        key = keys.public_from_b64(entry["public_key"])
        if keys.keyid(key) != entry["keyid"]:
            raise Rejection("untrusted-key", f"registry keyid {entry['keyid']} does not match its public key")
        if trust_list and entry["keyid"] not in trust_list:
            continue
        found[entry["keyid"]] = key
    if not found:
        why = "none of its keys is on this student's trust list" if trust_list else "it has no valid key"
        raise Rejection("untrusted-key", f"teacher {teacher!r}: {why}")
    return found


def verify_bytes(envelope: bytes, payload: bytes, trusted: dict[str, Ed25519PublicKey]) -> Verified:
    try:
        opened = open_packet(envelope, payload, trusted)
    except M2KTError as exc:
        raise Rejection(exc.slug if exc.slug != "unknown-key" else "untrusted-key", exc.detail) from None
    try:
        return Verified(opened, Knowledge.from_packet(opened, payload))
    except PacketContentError as exc:
        raise Rejection("invalid-content", str(exc)) from None


def fetch_and_verify(client: BrokerClient, summary: dict[str, object], trust_list: Collection[str]) -> Verified:
    """Download a packet's exact bytes and verify them; the broker's own checks are not relied on."""
    packet_id, teacher = str(summary["id"]), str(summary["teacher"])
    trusted = trusted_keys_of(client, teacher, trust_list)
    envelope, payload = client.get_envelope(packet_id), client.get_payload(packet_id)
    verified = verify_bytes(envelope, payload, trusted)
    if verified.opened.id != packet_id:
        raise Rejection("invalid-envelope", f"the envelope's statement is packet {verified.opened.id}, not {packet_id}")
    return verified


def check_task(kn: Knowledge, student_task: Mapping[str, Any]) -> None:
    """A CAL can only be fitted for the task the student solves: same family, same parameters.

    Raises:
        Rejection: ``task-mismatch`` (e.g. a packet for ``modarith`` p=23 at a student of p=47).
    """
    theirs = (kn.task_spec.get("name"), kn.task_spec.get("params", {}))
    ours = (student_task.get("name"), student_task.get("params", {}))
    if theirs != ours:
        raise Rejection("task-mismatch", f"the packet teaches task {theirs[0]} {theirs[1]}; "
                                         f"this student solves {ours[0]} {ours[1]}")  # fmt: skip
