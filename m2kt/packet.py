"""Build a signed knowledge packet, and open one: the checks of docs/protocol.md §2 in their order.

`open_packet` is shared by the broker (trusted = the publishing teacher's keys)
and the students (trusted = their trust list), so both refuse exactly the same
packets with exactly the same problem types.
"""

import hashlib
import io
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from m2kt import dsse
from m2kt.errors import DigestMismatch
from m2kt.manifest import Manifest, validate_manifest
from m2kt.payload import TensorInfo, check_index, read_header, save_numpy
from m2kt.statement import Statement, build_statement, packet_id, parse_statement

__all__ = ["BuiltPacket", "OpenedPacket", "build_packet", "open_packet"]


@dataclass(frozen=True)
class BuiltPacket:
    id: str
    envelope: bytes
    payload: bytes
    statement: bytes


@dataclass(frozen=True)
class OpenedPacket:
    id: str
    keyid: str  # the trusted key that signed it
    statement: Statement
    statement_bytes: bytes  # exactly the signed bytes
    manifest: Manifest
    tensors: dict[str, TensorInfo]
    payload_sha256: str
    signers: tuple[str, ...] = ()  # every distinct trusted key that signed (keyid among them)


def build_packet(
    manifest: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray[Any, Any]],
    *signers: Ed25519PrivateKey,
) -> BuiltPacket:
    """Serialize tensors to safetensors, wrap the manifest in a statement, sign it with DSSE."""
    payload = save_numpy(tensors)
    statement = build_statement(hashlib.sha256(payload).hexdigest(), manifest)
    envelope = dsse.sign(statement, *signers).to_json()
    return BuiltPacket(packet_id(statement), envelope, payload, statement)


def _open_payload(payload: bytes | Path) -> AbstractContextManager[IO[bytes]]:
    if isinstance(payload, Path):
        return payload.open("rb")
    return nullcontext(io.BytesIO(payload))


def open_packet(
    envelope: bytes,
    payload: bytes | Path,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    payload_sha256: str | None = None,
    payload_size: int | None = None,
) -> OpenedPacket:
    """Check a packet in protocol order and return what was verified.

    Args:
        envelope: the DSSE envelope bytes.
        payload: the payload bytes, or a file holding them.
        trusted: keyid -> public key of the keys allowed to sign it.
        payload_sha256, payload_size: already known when the payload was streamed to disk.

    Raises:
        InvalidEnvelope, InvalidManifest, UnknownKey, BadSignature, DigestMismatch,
        InvalidPayload: in this order of checking.
    """
    env = dsse.Envelope.from_json(envelope)
    parse_statement(env.payload)  # form first, as protocol orders it; trusted only after verify
    verified = dsse.verify(env, trusted)
    statement = parse_statement(verified.statement)
    if payload_sha256 is None or payload_size is None:
        with _open_payload(payload) as fh:
            data = fh.read()
        payload_sha256, payload_size = hashlib.sha256(data).hexdigest(), len(data)
    if payload_sha256 != statement.payload_sha256:
        raise DigestMismatch("the payload's sha256 is not the digest the statement signs")
    with _open_payload(payload) as fh:
        header = read_header(fh, payload_size)
    index = statement.predicate.get("tensors")
    if isinstance(index, dict):
        check_index(header, index)
    manifest = validate_manifest(statement.predicate)
    return OpenedPacket(
        id=packet_id(verified.statement),
        keyid=verified.keyid,
        signers=verified.keyids,
        statement=statement,
        statement_bytes=verified.statement,
        manifest=manifest,
        tensors=header,
        payload_sha256=payload_sha256,
    )
