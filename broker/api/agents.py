"""Agents, keys and teachers' signed heads."""

from typing import Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse

from broker.deps import AdminDep, AnyAgentDep, SessionsDep, StudentDep, TeacherDep
from broker.schemas import (
    AgentCreated,
    AgentIn,
    AgentOut,
    HeadStored,
    KeyIn,
    KeyOut,
    TeacherTrustOut,
    ThresholdIn,
    TokenOut,
    TokenRevoked,
    TrustReportIn,
    TrustReportOut,
)
from broker.services import agents as agents_service
from broker.services import heads as heads_service
from broker.services import trust as trust_service
from m2kt.errors import Forbidden

router = APIRouter(prefix="/agents", tags=["agents"])

Name = Path(max_length=64)


@router.post("", status_code=201)
def create_agent(body: AgentIn, _: AdminDep, sessions: SessionsDep) -> AgentCreated:
    new = agents_service.create_agent(sessions=sessions, name=body.name, role=body.role, public_key=body.public_key)
    return AgentCreated(name=new.name, role=new.role, token=new.token, keyid=new.keyid)


@router.get("/{name}", response_model_exclude_none=True)
def get_agent(_: AnyAgentDep, sessions: SessionsDep, name: str = Name) -> AgentOut:
    return agents_service.get_agent(sessions=sessions, name=name)


@router.put("/{name}/threshold")
def set_threshold(body: ThresholdIn, _: AdminDep, sessions: SessionsDep, name: str = Name) -> AgentOut:
    """How many of the teacher's keys must sign each packet and head (k-of-n); at most its unrevoked keys."""
    agent = agents_service.set_threshold(sessions=sessions, name=name, threshold=body.threshold)
    return agents_service.agent_out(agent)


@router.post("/{name}/keys", status_code=201)
def add_key(body: KeyIn, _: AdminDep, sessions: SessionsDep, name: str = Name) -> KeyOut:
    key = agents_service.add_key(sessions=sessions, name=name, public_key=body.public_key)
    return KeyOut(keyid=key.keyid, public_key=key.public_key, revoked=key.revoked)


@router.post("/{name}/keys/{keyid}/revoke")
def revoke_key(_: AdminDep, sessions: SessionsDep, name: str = Name, keyid: str = Path(max_length=64)) -> KeyOut:
    key = agents_service.revoke_key(sessions=sessions, name=name, keyid=keyid)
    return KeyOut(keyid=key.keyid, public_key=key.public_key, revoked=key.revoked)


@router.post("/{name}/token")
def rotate_token(_: AdminDep, sessions: SessionsDep, name: str = Name) -> TokenOut:
    """Issue a new bearer token for the agent (shown once); the old one is refused at once."""
    new = agents_service.rotate_token(sessions=sessions, name=name)
    return TokenOut(name=new.name, role=new.role, token=new.token)


@router.delete("/{name}/token")
def revoke_token(_: AdminDep, sessions: SessionsDep, name: str = Name) -> TokenRevoked:
    """Refuse the agent's token from now on; `POST` on the same path issues a new one."""
    agents_service.revoke_token(sessions=sessions, name=name)
    return TokenRevoked(name=name, revoked=True)


@router.put(
    "/{name}/head",
    status_code=201,
    response_model=HeadStored,
    responses={200: {"model": HeadStored, "description": "this head was already stored"}},
)
def put_head(envelope: dict[str, Any], caller: TeacherDep, sessions: SessionsDep, name: str = Name) -> JSONResponse:
    """Store the calling teacher's signed head (m2kt.head): 201 when stored, 200 when it is the stored one."""
    if caller.agent is None or caller.agent.name != name:
        raise Forbidden("a teacher puts only its own head")
    head, stored = heads_service.put_head(sessions=sessions, teacher=caller.agent, envelope=envelope)
    body = HeadStored(teacher=name, version=head.version, expires=head.expires.isoformat(), stored=stored)
    return JSONResponse(body.model_dump(), status_code=201 if stored else 200)


@router.get("/{name}/head", response_class=Response)
def get_head(_: AnyAgentDep, sessions: SessionsDep, name: str = Name) -> Response:
    """The teacher's newest signed head, byte for byte as stored; 404 when it never put one."""
    envelope = heads_service.get_head(sessions=sessions, name=name)
    return Response(envelope, media_type="application/vnd.dsse.envelope.v1+json")


@router.post(
    "/{name}/trust-reports",
    status_code=201,
    response_model=TrustReportOut,
    responses={200: {"model": TrustReportOut, "description": "the same report was logged before"}},
)
def submit_trust_report(
    body: TrustReportIn, caller: StudentDep, sessions: SessionsDep, name: str = Name
) -> JSONResponse:
    """A student's report of what it refused or removed of teacher ``name`` (rollback, withheld, revoked-key...).

    Logged in the event log; the same report again answers 200 and logs nothing.
    """
    assert caller.agent is not None
    out, created = trust_service.submit_trust_report(sessions=sessions, student=caller.agent, teacher=name, report=body)
    return JSONResponse(out.model_dump(), status_code=201 if created else 200)


@router.get("/{name}/trust-reports")
def list_trust_reports(_: AnyAgentDep, sessions: SessionsDep, name: str = Name) -> list[TrustReportOut]:
    """The students' trust reports on teacher ``name``, oldest first (the newest 500)."""
    with sessions.reader() as session:
        return trust_service.list_trust_reports(session=session, teacher=name)


@router.get("/{name}/trust")
def teacher_trust(caller: AnyAgentDep, sessions: SessionsDep, name: str = Name) -> TeacherTrustOut:
    """Teacher ``name``: its current head and expiry, versions per topic, keys, and students' trust reports."""
    with sessions.reader() as session:
        return trust_service.teacher_trust(session=session, name=name, include_quarantined=caller.sees_quarantined)
