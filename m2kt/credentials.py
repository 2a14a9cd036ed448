"""Agent credentials: bearer tokens kept in 0600 files, and enrolment of an agent with the broker.

A deployment (docker-compose, a Kubernetes job) starts agents that have no token yet.
`enroll` registers the agent once with the admin token and keeps the token it gets back
in a file only the agent's user can read; every later start finds the file and skips the
admin call, so the admin token is needed only on the first start. The broker shows a
token once, so a lost token file means a new agent name or an admin re-registering it.
"""

from __future__ import annotations

import os
from pathlib import Path

from m2kt.client import BrokerClient
from m2kt.errors import Conflict, InvalidOption

__all__ = ["enroll", "read_token_file", "write_token_file"]


def read_token_file(path: Path) -> str:
    """The token in ``path``; refuse a file that others can read (a leaked token is a leaked identity)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise InvalidOption(f"token file {path} does not exist") from None
    if mode & 0o077:
        raise InvalidOption(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    token = path.read_text().strip()
    if not token:
        raise InvalidOption(f"token file {path} is empty")
    return token


def write_token_file(path: Path, token: str) -> None:
    """Create ``path`` with mode 0600 from the start (never briefly world-readable); never overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())


def enroll(
    broker_url: str, admin_token: str, name: str, role: str, token_file: Path, public_key: str | None = None
) -> bool:
    """Register agent ``name`` unless ``token_file`` exists; True if it was registered now.

    Raises:
        ValueError: the broker knows ``name`` already but this agent has no token file.
        M2KTError: the broker refused (bad admin token, bad key, unreachable).
    """
    if token_file.exists():
        read_token_file(token_file)  # still check its mode and content
        return False
    with BrokerClient(broker_url, admin_token) as admin:
        try:
            created = admin.create_agent(name, role, public_key)
        except Conflict:
            raise InvalidOption(
                f"the broker already has an agent {name!r} but {token_file} is missing; "
                "use a new name or have an admin re-register it"
            ) from None
    write_token_file(token_file, str(created["token"]))
    return True
