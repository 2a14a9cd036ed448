"""Dependencies, declared once as `Annotated` aliases; routes just name them."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from broker import auth
from broker.db import Sessions
from broker.events import Broadcaster, StreamSlots
from broker.metrics import Metrics
from broker.models import Agent
from broker.repositories import agents as agents_repo
from broker.settings import BrokerSettings
from broker.storage import BlobStore
from m2kt.errors import Forbidden, Unauthorized, UnknownKey

ADMIN = "admin"


def get_settings(request: Request) -> BrokerSettings:
    settings: BrokerSettings = request.app.state.settings
    return settings


def get_sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def get_store(request: Request) -> BlobStore:
    store: BlobStore = request.app.state.store
    return store


def get_broadcaster(request: Request) -> Broadcaster:
    broadcaster: Broadcaster = request.app.state.broadcaster
    return broadcaster


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_stream_slots(request: Request) -> StreamSlots:
    slots: StreamSlots = request.app.state.stream_slots
    return slots


SettingsDep = Annotated[BrokerSettings, Depends(get_settings)]
SessionsDep = Annotated[Sessions, Depends(get_sessions)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
BroadcasterDep = Annotated[Broadcaster, Depends(get_broadcaster)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
StreamSlotsDep = Annotated[StreamSlots, Depends(get_stream_slots)]


class Caller:
    """Who is calling: the admin (no agent row) or a registered agent."""

    def __init__(self, role: str, agent: Agent | None) -> None:
        self.role = role
        self.agent = agent

    @property
    def sees_quarantined(self) -> bool:
        return self.role != "student"

    @property
    def stream_holder(self) -> str:
        """Whose budget of concurrent event streams a stream counts against (API and dashboard alike)."""
        return f"agent:{self.agent.id}" if self.agent is not None else self.role


def get_caller(request: Request, settings: SettingsDep, sessions: SessionsDep) -> Caller:
    token = auth.parse_bearer(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return caller_for_token(token, settings, sessions)


def caller_for_token(token: str, settings: BrokerSettings, sessions: Sessions) -> Caller:
    """The admin or the agent that ``token`` belongs to; `Unauthorized` otherwise."""
    admin = settings.admin_token
    if admin is not None and auth.same_secret(token, admin.get_secret_value()):
        return Caller(ADMIN, None)
    with sessions.reader() as session:
        return _agent_caller(session, token)


def _agent_caller(session: Session, token: str) -> Caller:
    agent = agents_repo.get_by_token_hash(session=session, token_hash=auth.hash_token(token))
    if agent is None or not auth.same_secret(agent.token_hash, auth.hash_token(token)):
        raise Unauthorized("the token is not valid")
    return Caller(agent.role, agent)


CallerDep = Annotated[Caller, Depends(get_caller)]


def _require(role: str) -> object:
    def dependency(caller: CallerDep) -> Caller:
        if caller.role != role:
            raise Forbidden(f"this needs the {role} role")
        return caller

    return Depends(dependency)


def _require_agent(caller: CallerDep) -> Caller:
    return caller


AnyAgentDep = Annotated[Caller, Depends(_require_agent)]
AdminDep = Annotated[Caller, _require(ADMIN)]
TeacherDep = Annotated[Caller, _require("teacher")]
StudentDep = Annotated[Caller, _require("student")]


@dataclass(frozen=True)
class Publisher:
    """A teacher allowed to publish, and its unrevoked keys (keyid -> base64 public key) as read before the upload.

    The publish verifies against these keys, and checks again under the writers' lock that the signing
    key was not revoked meanwhile.
    """

    caller: Caller
    keys: dict[str, str]


def _require_publisher(request: Request, settings: SettingsDep, sessions: SessionsDep) -> Publisher:
    """A teacher holding at least one unrevoked key: checked before the upload is read.

    The token and the keys are read on one pool checkout, returned before the body arrives: a
    connection is never held while a client sends its upload.
    """
    token = auth.parse_bearer(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    admin = settings.admin_token
    if admin is not None and auth.same_secret(token, admin.get_secret_value()):
        raise Forbidden("this needs the teacher role")
    with sessions.reader() as session:
        caller = _agent_caller(session, token)
        if caller.role != "teacher":
            raise Forbidden("this needs the teacher role")
        assert caller.agent is not None
        keys = {k.keyid: k.public_key for k in agents_repo.active_keys(session=session, agent_id=caller.agent.id)}
    if not keys:
        raise UnknownKey("every key of this teacher is revoked: it can publish nothing")
    return Publisher(caller, keys)


PublisherDep = Annotated[Publisher, Depends(_require_publisher)]
