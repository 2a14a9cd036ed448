"""Ed25519 keys: generate, save (PEM, private file mode 0600), load, and keyid().

A keyid is the lowercase hex SHA-256 of the raw 32-byte public key (docs/protocol.md §1).
"""

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from m2kt.errors import InvalidRequest, LocalInputError

__all__ = [
    "generate",
    "keyid",
    "load_private",
    "load_public",
    "public_from_b64",
    "public_to_b64",
    "raw_public",
    "save_keypair",
]


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(key: Ed25519PublicKey | bytes) -> str:
    """Lowercase hex SHA-256 of the raw public key."""
    raw = key if isinstance(key, bytes) else raw_public(key)
    return hashlib.sha256(raw).hexdigest()


def public_to_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode("ascii")


def public_from_b64(text: str) -> Ed25519PublicKey:
    """Parse standard base64 of a raw 32-byte Ed25519 key.

    Raises:
        InvalidRequest: not base64, or not 32 bytes.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("public_key is not standard base64") from exc
    if len(raw) != 32:
        raise InvalidRequest(f"public_key must be 32 raw bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def save_keypair(key: Ed25519PrivateKey, private_path: Path) -> Path:
    """Write the private key (PKCS#8 PEM, mode 0600) and `<name>.pub` (raw base64).

    The private file is created with 0600 from the start, never chmod-ed after writing.
    Returns the public key's path.
    """
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path = private_path.with_name(private_path.name + ".pub")
    public_path.write_text(public_to_b64(key.public_key()) + "\n")
    return public_path


def load_private(path: Path) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 private key, refusing files readable by others.

    Raises:
        LocalInputError: missing, too open, or not an Ed25519 PEM key.
    """
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise LocalInputError(f"cannot read private key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise LocalInputError(f"private key {path} has mode {mode:o}; it must be 0600")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise LocalInputError(f"{path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise LocalInputError(f"{path} is not an Ed25519 key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """Load a public key saved as raw base64 (`.pub`) or as PEM.

    Raises:
        LocalInputError: missing, or not an Ed25519 key in either form.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LocalInputError(f"cannot read public key {path}: {exc.strerror}") from exc
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise LocalInputError(f"{path} is not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise LocalInputError(f"{path} is not an Ed25519 key")
        return key
    try:
        return public_from_b64(data.decode("ascii", errors="replace").strip())
    except InvalidRequest as exc:  # the same check as the broker's, but a local file's problem
        raise LocalInputError(f"{path}: {exc.detail}") from exc
