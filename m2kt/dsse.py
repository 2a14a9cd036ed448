"""DSSE v1 envelopes: PAE, Ed25519 signing, and verification that hands on only verified bytes.

The envelope is parsed strictly (standard base64, no duplicate keys). `verify`
returns a `VerifiedStatement`; callers parse *those* bytes and never go back to
the envelope, so nothing unsigned can slip in between verification and use.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> pae("t", b"hi")
b'DSSEv1 1 t 2 hi'
"""

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from m2kt import keys
from m2kt.constants import MAX_SIGNATURES, PAYLOAD_TYPE
from m2kt.errors import BadSignature, InvalidEnvelope, UnknownKey
from m2kt.jsonutil import JSONError, loads_strict

__all__ = ["Envelope", "Signature", "VerifiedStatement", "b64decode_strict", "pae", "sign", "verify"]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding; lengths are byte counts in ASCII decimal."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 with padding, nothing else.

    Raises:
        InvalidEnvelope: naming `what`.
    """
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InvalidEnvelope(f"{what} is not standard base64") from exc


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        """Parse envelope bytes; refuse anything but DSSE v1 carrying an in-toto statement.

        Raises:
            InvalidEnvelope: with the first reason found.
        """
        try:
            obj = loads_strict(data)
        except JSONError as exc:
            raise InvalidEnvelope(f"envelope: {exc}") from exc
        if not isinstance(obj, dict):
            raise InvalidEnvelope("envelope must be a JSON object")
        payload_type, payload, sigs = obj.get("payloadType"), obj.get("payload"), obj.get("signatures")
        if not isinstance(payload_type, str):
            raise InvalidEnvelope("envelope.payloadType must be a string")
        if payload_type != PAYLOAD_TYPE:
            raise InvalidEnvelope(f"payloadType must be {PAYLOAD_TYPE!r}, got {payload_type!r}")
        if not isinstance(payload, str):
            raise InvalidEnvelope("envelope.payload must be a string")
        if not isinstance(sigs, list) or not sigs:
            raise InvalidEnvelope("envelope.signatures must be a non-empty list")
        if len(sigs) > MAX_SIGNATURES:
            raise InvalidEnvelope(f"envelope carries {len(sigs)} signatures; at most {MAX_SIGNATURES} are accepted")
        parsed = []
        for i, entry in enumerate(sigs):
            if not isinstance(entry, dict):
                raise InvalidEnvelope(f"signatures[{i}] must be an object")
            kid, sig = entry.get("keyid"), entry.get("sig")
            if not isinstance(kid, str) or not isinstance(sig, str):
                raise InvalidEnvelope(f"signatures[{i}] needs string keyid and sig")
            parsed.append(Signature(keyid=kid, sig=b64decode_strict(sig, f"signatures[{i}].sig")))
        return cls(payload_type, b64decode_strict(payload, "envelope.payload"), tuple(parsed))

    def to_json(self) -> bytes:
        obj = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in self.signatures],
        }
        return json.dumps(obj, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class VerifiedStatement:
    keyid: str
    statement: bytes  # the only bytes callers may parse
    keyids: tuple[str, ...] = ()  # every distinct trusted key that signed (k-of-n counts these)


def sign(statement: bytes, *signers: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> Envelope:
    """Sign statement bytes with each key, in order."""
    message = pae(payload_type, statement)
    sigs = tuple(Signature(keys.keyid(k.public_key()), k.sign(message)) for k in signers)
    return Envelope(payload_type, statement, sigs)


def verify(env: Envelope, trusted: Mapping[str, Ed25519PublicKey]) -> VerifiedStatement:
    """Return the statement when every signature by a trusted keyid verifies.

    Signatures by other keyids are ignored; at least one trusted one is required.

    Raises:
        UnknownKey: no signature names a trusted keyid.
        BadSignature: a signature by a trusted keyid does not verify.
    """
    message = pae(env.payload_type, env.payload)
    known = [s for s in env.signatures if s.keyid in trusted]
    if not known:
        raise UnknownKey("no signature is by a trusted key (at a broker: a registered, unrevoked key of the publisher)")
    for s in known:
        try:
            trusted[s.keyid].verify(s.sig, message)
        except InvalidSignature as exc:
            raise BadSignature(f"signature by key {s.keyid[:16]}… does not verify") from exc
    return VerifiedStatement(
        keyid=known[0].keyid, statement=env.payload, keyids=tuple(dict.fromkeys(s.keyid for s in known))
    )
