"""The student's memory of what it trusted before, so a dishonest broker cannot turn it back.

Checking each packet on its own (signature, digest, registry key) stops forgery, not a
broker that serves genuine but *old* data. Following The Update Framework, the student keeps,
beside its CAL store, one JSON file (``trust.json``, replaced atomically) with:

- **pinned keys** per teacher: the keys (public bytes, not only keyids) the student trusts for
  it, taken from its configured trust list or, on first use, from the broker's registry (a
  logged trust-on-first-use choice). A key the registry adds later is not trusted until the
  operator lists it.
- **revoked keys** ever seen in the registry: revocation is sticky, so a broker that later
  lists the key as valid again gains nothing.
- the **highest version** seen per (teacher, topic), with the packet that carried it.
- the **payload digests** of statements already verified, so a payload served under another
  packet's statement is recognised as mix-and-match rather than as noise.
- the **CALs removed** because the key that signed their packet was revoked, and whether the
  broker has the report of each removal yet (an unsent one is sent on the next sync).
- the **last head** of each teacher that signs one (`m2kt.head`, TUF's timestamp role): an
  older head is a rollback, a head past its expiry makes the teacher stale (nothing of it is
  accepted until a fresh head comes, and a broker that stops serving heads runs into that), and
  a packet the head names that the broker does not list was withheld.

`TrustState.update_head` and `TrustState.check` run after the signatures verified and before
anything is trained; each refusal is a `Rejection` whose reason (`rollback`, `stale`,
`revoked-key`, `mix-and-match`, `withheld`)
goes into the report to the broker. Only after every check passes does `TrustState.record`
remember the packet's versions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from m2kt import dsse, keys
from m2kt.errors import M2KTError, UnknownKey
from m2kt.fsutil import atomic_write_text
from m2kt.head import Head, open_head
from m2kt.packet import OpenedPacket

__all__ = ["TRUST_FILE", "Rejection", "TrustState", "signing_keyids"]

logger = logging.getLogger(__name__)

TRUST_FILE = "trust.json"


class Rejection(M2KTError):
    """Why a packet was not trained on: ``reason`` is a problem slug or ``untrusted-key``, ``rollback`` etc."""

    slug = "rejected"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def signing_keyids(envelope: bytes) -> set[str]:
    """The keyids an envelope's signatures name (unverified: used only to explain a refusal)."""
    try:
        return {sig.keyid for sig in dsse.Envelope.from_json(envelope).signatures}
    except M2KTError:
        return set()


@dataclass
class TrustState:
    path: Path | None  # None: kept in memory only (a one-off check, e.g. the demo)
    pinned: dict[str, dict[str, str]] = field(default_factory=dict)  # teacher -> keyid -> public key (b64)
    revoked: dict[str, str] = field(default_factory=dict)  # keyid -> teacher
    versions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # teacher -> topic -> seen
    subjects: dict[str, str] = field(default_factory=dict)  # payload sha256 -> packet id
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # teacher -> last head (version, expires, topics)
    removed: dict[str, dict[str, Any]] = field(default_factory=dict)  # packet id -> teacher, keyid, reported
    thresholds: dict[str, int] = field(default_factory=dict)  # teacher -> highest k of k-of-n ever listed

    @classmethod
    def load(cls, path: Path) -> TrustState:
        """The state kept at ``path``; an empty one when the student never trusted anything yet."""
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        return cls(
            path,
            data["pinned"],
            data["revoked"],
            data["versions"],
            data["subjects"],
            data.get("heads", {}),
            data.get("removed", {}),
            data.get("thresholds", {}),
        )

    def save(self) -> None:
        if self.path is None:
            return
        body = {
            "pinned": self.pinned,
            "revoked": self.revoked,
            "versions": self.versions,
            "subjects": self.subjects,
            "heads": self.heads,
            "removed": self.removed,
            "thresholds": self.thresholds,
        }
        atomic_write_text(self.path, json.dumps(body, indent=1, sort_keys=True))

    # -- keys ------------------------------------------------------------------------------------
    def keys_for(
        self, teacher: str, agent: Mapping[str, Any], trust_list: Collection[str]
    ) -> dict[str, Ed25519PublicKey]:
        """The keys this student accepts for ``teacher``, after learning what the registry says.

        Revocations in ``agent`` (the broker's registry entry) are remembered for good; keys are
        pinned from the trust list, or on first use from the registry, and never from it again.

        Raises:
            Rejection: ``untrusted-key`` when no pinned, unrevoked key remains.
        """
        if agent.get("role") != "teacher":
            raise Rejection("untrusted-key", f"publisher {teacher!r} is not a teacher")
        listed = self.learn_revoked(teacher, agent)
        changed = False
        pins = self.pinned.setdefault(teacher, {})
        fresh = {k: v for k, v in listed.items() if k not in pins and k not in self.revoked}
        if trust_list:
            fresh = {k: v for k, v in fresh.items() if k in trust_list}
        elif pins:
            fresh = {}  # after first use only the operator's trust list adds keys
        if fresh:
            # Pinning what the operator listed is their decision (INFO); trust on first use is ours (WARNING).
            level, how = (
                (logging.INFO, "from the configured trust list")
                if trust_list
                else (logging.WARNING, "on first use (TOFU)")
            )
            logger.log(level, "teacher %s: pinning keys %s %s", teacher, sorted(k[:12] for k in fresh), how)
            pins.update(fresh)
            changed = True
        if changed:
            self.save()
        found = {k: keys.public_from_b64(v) for k, v in pins.items() if k not in self.revoked}
        if trust_list:
            found = {k: v for k, v in found.items() if k in trust_list}
        if not found:
            why = "none of its keys is on this student's trust list" if trust_list else "it has no valid pinned key"
            raise Rejection("untrusted-key", f"teacher {teacher!r}: {why}")
        return found

    def learn_revoked(self, teacher: str, agent: Mapping[str, Any]) -> dict[str, str]:
        """Remember (for good, saved at once) every key the registry entry ``agent`` lists as revoked.

        Returns:
            keyid -> public key (b64) of every key the entry lists.

        Raises:
            Rejection: ``untrusted-key`` when the entry is malformed or a keyid does not match its key.
        """
        listed: dict[str, str] = {}
        changed = False
        for entry in agent.get("keys", []):
            try:
                keyid, public = str(entry["keyid"]), str(entry["public_key"])
                matches = keys.keyid(keys.public_from_b64(public)) == keyid
            except (M2KTError, KeyError, TypeError, ValueError) as exc:  # a registry answer we cannot read
                raise Rejection("untrusted-key", f"the registry entry of {teacher!r} is malformed: {exc}") from None
            if not matches:
                raise Rejection("untrusted-key", f"registry keyid {keyid} does not match its public key")
            if entry.get("revoked") and keyid not in self.revoked:
                self.revoked[keyid] = teacher
                changed = True
                logger.warning("teacher %s: key %s is revoked; it is never trusted again", teacher, keyid[:12])
            listed[keyid] = public
        k = agent.get("threshold", 1)
        if isinstance(k, int) and not isinstance(k, bool) and k > self.thresholds.get(teacher, 1):
            self.thresholds[teacher] = k  # like revocation, sticky: a broker cannot lower it again
            changed = True
            logger.warning("teacher %s: %d of its keys must sign from now on", teacher, k)
        if changed:
            self.save()
        return listed

    def check_signers(self, teacher: str, signers: Collection[str], minimum: int = 1) -> None:
        """Enough distinct trusted keys signed: the teacher's threshold as ever listed, at least ``minimum``.

        Raises:
            Rejection: ``threshold`` when fewer signed.
        """
        need = max(self.thresholds.get(teacher, 1), minimum)
        if len(set(signers)) < need:
            raise Rejection(
                "threshold", f"signed by {len(set(signers))} of {teacher!r}'s trusted keys; {need} must sign"
            )

    def explain_unknown_key(self, envelope: bytes, detail: str) -> Rejection:
        """An envelope no trusted key verifies: ``revoked-key`` when it names a key seen revoked."""
        revoked = sorted(signing_keyids(envelope) & set(self.revoked))
        if revoked:
            return Rejection("revoked-key", f"signed by key {revoked[0]}, which was revoked")
        return Rejection("untrusted-key", detail)

    def explain_digest_mismatch(self, payload_sha256: str, detail: str) -> Rejection:
        """A payload that is not the statement's: ``mix-and-match`` when it is another packet's."""
        other = self.subjects.get(payload_sha256)
        if other is not None:
            return Rejection("mix-and-match", f"the payload served is the one of packet {other}")
        return Rejection("digest-mismatch", detail)

    # -- heads -----------------------------------------------------------------------------------
    def update_head(
        self,
        teacher: str,
        envelope: bytes | None,
        trusted: Mapping[str, Ed25519PublicKey],
        now: datetime | None = None,
        minimum: int = 1,
    ) -> None:
        """Take the head the broker serves for ``teacher`` (None: it serves none) if it is newer.

        No head, or the same head again, keeps the last one: its expiry then decides (`check`).

        Raises:
            Rejection: ``rollback`` (a head older than the last, or another head of the same
            version), ``mix-and-match`` (a head of another teacher), ``revoked-key`` or
            ``untrusted-key`` (not signed by a pinned key), ``threshold`` (by fewer pinned keys than
            the teacher's k-of-n, or ``minimum``), ``invalid-head`` (malformed).
        """
        if envelope is None:
            return
        try:
            head = open_head(envelope, trusted)
        except UnknownKey as exc:
            raise self.explain_unknown_key(envelope, exc.detail) from None
        except M2KTError as exc:
            raise Rejection("invalid-head", exc.detail) from None
        self.check_signers(teacher, head.signers, minimum)
        if head.teacher != teacher:
            raise Rejection("mix-and-match", f"the head served for {teacher!r} is the head of {head.teacher!r}")
        last = self.heads.get(teacher)
        entry = _head_entry(head)
        if last is not None and head.version < last["version"]:
            raise Rejection("rollback", f"head version {head.version} served after head {last['version']} was seen")
        if last is not None and head.version == last["version"]:
            if entry != last:
                raise Rejection("rollback", f"another head with the seen version {head.version}")
            return
        self.heads[teacher] = entry
        self.save()

    def withheld(self, teacher: str, topic: str) -> tuple[str, str] | None:
        """(packet id, detail) when the last head names a newer packet on ``topic`` than any seen."""
        named = self.heads.get(teacher, {}).get("topics", {}).get(topic)
        if named is None:
            return None
        seen = self.versions.get(teacher, {}).get(topic, {}).get("version", 0)
        if seen >= named["version"]:
            return None
        return named["packet"], f"{topic}: the head names version {named['version']}; the broker served up to {seen}"

    # -- versions and freshness ----------------------------------------------------------------
    def check(self, opened: OpenedPacket, summary: Mapping[str, Any], now: datetime | None = None) -> None:
        """Refuse a verified packet that does not fit what this student trusted before.

        Raises:
            Rejection: ``mix-and-match`` (the broker's summary names another packet, teacher or a
            topic the statement does not), ``stale`` (past its ``expires``), ``rollback`` (a
            version at or below one seen for the same teacher and topic, or none after one was).
        """
        manifest = opened.manifest
        if opened.id != summary["id"]:
            raise Rejection("mix-and-match", f"the envelope served is packet {opened.id}, not {summary['id']}")
        teacher = str(summary["teacher"])
        if manifest.teacher.agent != teacher:
            raise Rejection("mix-and-match", f"the statement names teacher {manifest.teacher.agent!r}, not {teacher!r}")
        stray = sorted(set(map(str, summary.get("topics", []))) - set(manifest.topics))
        if stray:
            raise Rejection("mix-and-match", f"served under topics {stray} that the statement does not name")
        now = now or datetime.now(UTC)
        expires = manifest.expires_at
        if expires is not None and expires <= now:
            raise Rejection("stale", f"the packet expired at {manifest.expires}")
        head = self.heads.get(teacher)
        if head is not None and datetime.fromisoformat(head["expires"]) <= now:
            raise Rejection(
                "stale", f"the teacher's last head (version {head['version']}) expired at {head['expires']}"
            )
        seen = self.versions.get(teacher, {})
        for topic in manifest.topics:
            last = seen.get(topic)
            if last is None or last["packet"] == opened.id:
                continue
            if manifest.version is None:
                raise Rejection("rollback", f"{topic}: no version, after version {last['version']} was seen")
            if manifest.version <= last["version"]:
                raise Rejection("rollback", f"{topic}: version {manifest.version}, after {last['version']} was seen")

    def record(self, opened: OpenedPacket) -> None:
        """Remember a packet that passed `check`: its versions and its payload digest."""
        teacher = opened.manifest.teacher.agent
        if opened.manifest.version is not None:
            for topic in opened.manifest.topics:
                self.versions.setdefault(teacher, {})[topic] = {"version": opened.manifest.version, "packet": opened.id}
        self.subjects[opened.payload_sha256] = opened.id
        self.save()


def _head_entry(head: Head) -> dict[str, Any]:
    return {
        "version": head.version,
        "expires": head.expires.isoformat(),
        "topics": {t: {"version": h.version, "packet": h.packet} for t, h in sorted(head.topics.items())},
    }
