"""Agents and their keys."""

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from broker.models import Agent, Key


def get_by_name(*, session: Session, name: str) -> Agent | None:
    return session.scalar(select(Agent).where(Agent.name == name).options(selectinload(Agent.keys)))


def get_by_token_hash(*, session: Session, token_hash: str) -> Agent | None:
    return session.scalar(select(Agent).where(Agent.token_hash == token_hash))


def create(*, session: Session, name: str, role: str, token_hash: str, now: datetime) -> Agent:
    agent = Agent(name=name, role=role, token_hash=token_hash, created_at=now)
    session.add(agent)
    session.flush()
    return agent


def get_key(*, session: Session, keyid: str) -> Key | None:
    return session.get(Key, keyid)


def add_key(*, session: Session, agent: Agent, keyid: str, public_key: str, now: datetime) -> Key:
    key = Key(keyid=keyid, agent_id=agent.id, public_key=public_key, revoked=False, created_at=now)
    session.add(key)
    session.flush()
    return key


def active_keys(*, session: Session, agent_id: int) -> list[Key]:
    rows = session.scalars(select(Key).where(Key.agent_id == agent_id, Key.revoked.is_(False)))
    return list(rows)
