"""Dashboard sessions, kept server-side.

The browser's cookie holds only a random session id (256 bits); the database keeps its
SHA-256, the role and agent it stands for, a CSRF token for the session's forms, and an
expiry. The bearer token never reaches the cookie. A session also remembers the hash of the
token it was opened with: rotating or revoking that token (or changing the admin token) ends
every session opened with it. Signing out deletes the row, so a copied cookie dies with it.
"""

import secrets
from dataclasses import dataclass
from datetime import timedelta

from broker import auth, clock
from broker.db import Sessions
from broker.models import Agent, DashboardSession
from broker.repositories import dashboard as dashboard_repo

__all__ = ["ActiveSession", "OpenedSession", "close", "open_session", "resolve"]


@dataclass(frozen=True)
class OpenedSession:
    cookie: str  # the raw id: goes to the browser once, never stored
    csrf: str


@dataclass(frozen=True)
class ActiveSession:
    role: str
    agent: Agent | None  # None: the admin
    csrf: str


def open_session(*, sessions: Sessions, role: str, agent: Agent | None, token: str, ttl: timedelta) -> OpenedSession:
    """Store a new session for a caller who just proved ``token``; expired sessions are swept."""
    cookie, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), clock.now()
    row = DashboardSession(
        id_hash=auth.hash_token(cookie),
        agent_id=agent.id if agent is not None else None,
        role=role,
        token_hash=auth.hash_token(token),
        csrf=csrf,
        created_at=now,
        expires_at=now + ttl,
    )
    with sessions.writer() as session, session.begin():
        dashboard_repo.delete_expired_sessions(session=session, now=now)
        dashboard_repo.add_session(session=session, row=row)
    return OpenedSession(cookie=cookie, csrf=csrf)


def resolve(*, sessions: Sessions, cookie: str, admin_token: str | None) -> ActiveSession | None:
    """The live session a cookie names, or None: unknown, expired, or its token since rotated or revoked."""
    if not cookie or len(cookie) > 128:
        return None
    with sessions.reader() as session:
        found = dashboard_repo.get_session(session=session, id_hash=auth.hash_token(cookie))
    if found is None:
        return None
    row, agent = found
    if row.expires_at <= clock.now():
        return None
    if agent is not None:
        current = agent.token_hash
    elif admin_token is not None:
        current = auth.hash_token(admin_token)
    else:
        return None
    if not auth.same_secret(row.token_hash, current):
        return None
    return ActiveSession(role=row.role, agent=agent, csrf=row.csrf)


def close(*, sessions: Sessions, cookie: str) -> None:
    """End the session a cookie names (a no-op when there is none)."""
    if not cookie or len(cookie) > 128:
        return
    with sessions.writer() as session, session.begin():
        dashboard_repo.delete_session(session=session, id_hash=auth.hash_token(cookie))
