"""Agent registration and key changes (each is a log entry), and the registry entry as agents read it."""

import logging
import re
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import auth, clock
from broker.db import Sessions
from broker.models import Agent, Head, Key
from broker.repositories import agents as agents_repo
from broker.repositories import log as log_repo
from broker.schemas import AgentOut, KeyOut
from broker.services import eventlog
from m2kt import keys
from m2kt.errors import Conflict, InvalidRequest, NotFound

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ROLES = ("teacher", "student")


@dataclass(frozen=True)
class NewAgent:
    name: str
    role: str
    token: str  # shown once, never stored
    keyid: str | None


def _add_key(session: Session, head: Head, agent: Agent, public_key: str) -> Key:
    kid = keys.keyid(keys.public_from_b64(public_key))
    if agents_repo.get_key(session=session, keyid=kid) is not None:
        raise Conflict("that public key is already registered")
    now = clock.now()
    key = agents_repo.add_key(session=session, agent=agent, keyid=kid, public_key=public_key, now=now)
    body = {"agent": agent.name, "keyid": kid, "public_key": public_key}
    eventlog.append(session=session, head=head, kind="key.add", subject=kid, body=body, at=now)
    return key


def create_agent(*, sessions: Sessions, name: str, role: str, public_key: str | None) -> NewAgent:
    """Register an agent; teachers must bring an Ed25519 public key, students must not.

    Raises:
        InvalidRequest: bad name, role or key.  Conflict: the name or key is taken.
    """
    if not NAME_RE.fullmatch(name):
        raise InvalidRequest("name must be 1-64 characters of letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {ROLES}")
    if role == "teacher" and public_key is None:
        raise InvalidRequest("a teacher needs a public_key")
    if role == "student" and public_key is not None:
        raise InvalidRequest("only teachers register a public_key")
    if public_key is not None:
        keys.public_from_b64(public_key)  # refuse a bad key before taking the lock
    token = auth.new_token()
    try:
        with sessions.writer() as session, session.begin():
            head = log_repo.lock_head(session=session)
            if agents_repo.get_by_name(session=session, name=name) is not None:
                raise Conflict(f"the agent name {name!r} is taken")
            now = clock.now()
            agent = agents_repo.create(
                session=session, name=name, role=role, token_hash=auth.hash_token(token), now=now
            )
            body = {"agent": name, "role": role}
            eventlog.append(session=session, head=head, kind="agent.create", subject=name, body=body, at=now)
            key = _add_key(session, head, agent, public_key) if public_key is not None else None
    except IntegrityError as exc:
        raise Conflict("the agent name or key is already registered") from exc
    return NewAgent(name=name, role=role, token=token, keyid=key.keyid if key else None)


def _teacher(session: Session, name: str) -> Agent:
    agent = agents_repo.get_by_name(session=session, name=name)
    if agent is None:
        raise NotFound(f"no agent named {name!r}")
    if agent.role != "teacher":
        raise InvalidRequest("only teachers have keys")
    return agent


def add_key(*, sessions: Sessions, name: str, public_key: str) -> Key:
    """Register another key for a teacher (rotation: add the new key, then revoke the old)."""
    keys.public_from_b64(public_key)
    try:
        with sessions.writer() as session, session.begin():
            head = log_repo.lock_head(session=session)
            return _add_key(session, head, _teacher(session, name), public_key)
    except IntegrityError as exc:
        raise Conflict("that public key is already registered") from exc


def revoke_key(*, sessions: Sessions, name: str, keyid: str) -> Key:
    """Revoke a teacher's key; idempotent. Packets it signed stay; it signs nothing new.

    Raises:
        NotFound: no such agent, or the key is not that agent's.
    """
    with sessions.writer() as session, session.begin():
        head = log_repo.lock_head(session=session)
        agent = _teacher(session, name)
        key = agents_repo.get_key(session=session, keyid=keyid)
        if key is None or key.agent_id != agent.id:
            raise NotFound(f"agent {name!r} has no key {keyid}")
        if not key.revoked:
            now = clock.now()
            key.revoked, key.revoked_at = True, now
            body = {"agent": name, "keyid": keyid}
            eventlog.append(session=session, head=head, kind="key.revoke", subject=keyid, body=body, at=now)
        return key


def set_threshold(*, sessions: Sessions, name: str, threshold: int) -> Agent:
    """How many of the teacher's unrevoked keys must sign each packet and head from now on (k-of-n).

    Raises:
        NotFound: no such agent.  InvalidRequest: not a teacher.
        Conflict: the teacher has fewer unrevoked keys than ``threshold`` (it could sign nothing).
    """
    with sessions.writer() as session, session.begin():
        head = log_repo.lock_head(session=session)
        agent = _teacher(session, name)
        active = sum(1 for k in agent.keys if not k.revoked)
        if threshold > active:
            raise Conflict(f"{name} has {active} unrevoked keys; a threshold of {threshold} would let it sign nothing")
        if agent.threshold != threshold:
            agent.threshold = threshold
            body = {"agent": name, "threshold": threshold}
            eventlog.append(session=session, head=head, kind="agent.threshold", subject=name, body=body, at=clock.now())
        return agent


def rotate_token(*, sessions: Sessions, name: str) -> NewAgent:
    """Give an agent a fresh token; the old one is refused from the next request on.

    Only the hash is stored, so the new token is returned once and never again.

    Raises:
        NotFound: no such agent.
    """
    token = auth.new_token()
    with sessions.writer() as session, session.begin():
        agent = _agent(session, name)
        agent.token_hash = auth.hash_token(token)
        keyid = next((k.keyid for k in agent.keys if not k.revoked), None)
        out = NewAgent(name=agent.name, role=agent.role, token=token, keyid=keyid)
    logger.info("agent token rotated", extra={"agent": name})
    return out


def revoke_token(*, sessions: Sessions, name: str) -> None:
    """Refuse an agent's token from now on, without issuing another (`rotate_token` issues one).

    The stored hash becomes that of a random secret nobody holds, so no token matches it.

    Raises:
        NotFound: no such agent.
    """
    with sessions.writer() as session, session.begin():
        _agent(session, name).token_hash = auth.hash_token(auth.new_token())
    logger.info("agent token revoked", extra={"agent": name})


def get_agent(*, sessions: Sessions, name: str) -> AgentOut:
    """An agent's registry entry: its role and its keys, revoked ones included (students learn revocations here)."""
    with sessions.reader() as session:
        agent = _agent(session, name)
        return agent_out(agent)


def agent_out(agent: Agent) -> AgentOut:
    """The registry entry of a loaded agent; only teachers carry a signing threshold."""
    keys = [KeyOut(keyid=k.keyid, public_key=k.public_key, revoked=k.revoked) for k in agent.keys]
    threshold = agent.threshold if agent.role == "teacher" else None
    return AgentOut(name=agent.name, role=agent.role, keys=keys, threshold=threshold)


def _agent(session: Session, name: str) -> Agent:
    agent = agents_repo.get_by_name(session=session, name=name)
    if agent is None:
        raise NotFound(f"no agent named {name!r}")
    return agent
