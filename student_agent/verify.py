"""The student's own check of a packet before it trains on anything.

The keys are the teacher's pinned, never-revoked keys (`student_agent.trust`: from the trust list,
or from the broker's registry on first use). Then `open_packet` runs the protocol's checks
(envelope, signature, digest, payload, manifest), the trust state checks the packet against what
the student trusted before (rollback, expiry, mix-and-match), and `Knowledge.from_packet` the
packet-format contract. Every failure is a `Rejection` with a reason that goes into the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from m2kt.client import BrokerClient
from m2kt.errors import DigestMismatch, M2KTError, NotFound, UnknownKey
from m2kt.packet import OpenedPacket, open_packet
from student_agent.knowledge import Knowledge, PacketContentError
from student_agent.trust import Rejection, TrustState

__all__ = ["Rejection", "Verified", "check_task", "fetch_and_verify", "head_of"]


@dataclass(frozen=True)
class Verified:
    opened: OpenedPacket
    knowledge: Knowledge


def _open(envelope: bytes, payload: bytes, trusted: dict[str, Ed25519PublicKey], trust: TrustState) -> OpenedPacket:
    try:
        return open_packet(envelope, payload, trusted)
    except UnknownKey as exc:
        raise trust.explain_unknown_key(envelope, exc.detail) from None
    except DigestMismatch as exc:
        raise trust.explain_digest_mismatch(hashlib.sha256(payload).hexdigest(), exc.detail) from None
    except M2KTError as exc:
        raise Rejection(exc.slug, exc.detail) from None


def head_of(client: BrokerClient, teacher: str) -> bytes | None:
    try:
        return client.get_head(teacher)
    except NotFound:
        return None  # a teacher that signs no head, or a broker that withholds it: the last head decides


def fetch_and_verify(
    client: BrokerClient,
    summary: dict[str, object],
    trust_list: Collection[str],
    trust: TrustState | None = None,
    min_signers: int = 1,
) -> Verified:
    """Download a packet's exact bytes and verify them; the broker's own checks are not relied on.

    Order: keys (pinned, revocations and the k-of-n threshold learnt), the teacher's signed head,
    the protocol's checks of the bytes, enough signers (``min_signers`` at least), then the trust
    state's checks against what this student trusted before; only then is the packet's version
    remembered and its content read. Without ``trust`` the memory lasts this call only.

    Raises:
        Rejection: the first check that fails, with its reason.
    """
    trust = trust if trust is not None else TrustState(None)
    packet_id, teacher = str(summary["id"]), str(summary["teacher"])
    trusted = trust.keys_for(teacher, client.get_agent(teacher), trust_list)
    trust.update_head(teacher, head_of(client, teacher), trusted, minimum=min_signers)
    envelope, payload = client.get_envelope(packet_id), client.get_payload(packet_id)
    opened = _open(envelope, payload, trusted, trust)
    trust.check_signers(teacher, opened.signers, min_signers)
    trust.check(opened, summary)
    trust.record(opened)
    try:
        return Verified(opened, Knowledge.from_packet(opened, payload))
    except PacketContentError as exc:
        raise Rejection("invalid-content", str(exc)) from None


def check_task(kn: Knowledge, student_task: Mapping[str, Any]) -> None:
    """A CAL can only be fitted for the task the student solves: same family, same parameters.

    Raises:
        Rejection: ``task-mismatch`` (e.g. a packet for ``modarith`` p=23 at a student of p=47).
    """
    theirs = (kn.task_spec.get("name"), kn.task_spec.get("params", {}))
    ours = (student_task.get("name"), student_task.get("params", {}))
    if theirs != ours:
        raise Rejection(
            "task-mismatch", f"the packet teaches task {theirs[0]} {theirs[1]}; this student solves {ours[0]} {ours[1]}"
        )
